"""The model also trains with `transformers.Trainer`: it returns a loss when given labels."""

from __future__ import annotations

import datasets
import torch
from training_support import grade_structured_split
from transformers import Trainer, TrainingArguments

from retinascan_hf.tiny_clip import random_retinascan


def test_transformers_trainer_trains_the_heads_on_cached_features(tmp_path):
    model, _ = random_retinascan(seed=0)
    split = grade_structured_split(16, seed=0)
    dataset = datasets.Dataset.from_dict(
        {"image_features": split.features[:, 0].tolist(), "labels": split.grades.tolist()}
    ).with_format("torch")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        max_steps=30,
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        logging_steps=5,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert not torch.equal(before["projection.fc1.weight"], after["projection.fc1.weight"])
    assert not torch.equal(before["coral.bias"], after["coral.bias"])
    frozen = [name for name in before if name.startswith("clip.")]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
