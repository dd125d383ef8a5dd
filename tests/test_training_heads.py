"""Head training on cached features with a known grade structure, then calibration on validation data."""

from __future__ import annotations

import pytest
import torch
from accelerate.utils import set_seed
from training_support import grade_structured_split, small_config

from retinascan_hf.tiny_clip import random_retinascan
from retinascan_hf.training import RetinaScanTrainer, make_accelerator
from retinascan_hf.training.evaluation import evaluate_modes
from retinascan_hf.training.export import build_feature_bank, calibrate_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Heads trained for 30 short epochs on grade-structured features (two views per training row)."""
    config = small_config(
        tmp_path_factory.mktemp("heads"), num_epochs=30, batches_per_epoch=10, n_per_class=8, learning_rate=1e-2
    )
    set_seed(config.seed)
    model, _ = random_retinascan(seed=0)
    train = grade_structured_split(40, seed=1, n_views=2, name="train")
    validation = grade_structured_split(20, seed=2, name="validation")
    trainer = RetinaScanTrainer(model, config, train, validation, make_accelerator(config))
    trainer.train()
    return trainer, train, validation


def test_head_training_reaches_qwk_09_on_held_out_features(trained):
    trainer, train, _ = trained
    model = trainer.unwrapped_model
    test = grade_structured_split(20, seed=3, name="test")
    bank = build_feature_bank(model, train, batch_size=256)
    reports = evaluate_modes(model, test.view_features(model), test.grades, bank)
    assert {mode: report["qwk"] >= 0.9 for mode, report in reports.items()} == {
        "knn": True,
        "ordinal": True,
        "prototype": True,
    }, {mode: report["qwk"] for mode, report in reports.items()}
    assert trainer.history[-1]["train/loss"] < trainer.history[0]["train/loss"]
    assert trainer.progress.best_qwk == max(epoch["val/qwk"] for epoch in trainer.history)


def test_calibration_lowers_ece_and_thresholds_keep_qwk(trained):
    trainer, _, validation = trained
    model = trainer.unwrapped_model
    result = calibrate_model(model, validation, trainer.config)
    assert result.prototype_ece_after < result.prototype_ece_before
    assert result.ordinal_qwk_after >= result.ordinal_qwk_before
    assert model.config.coral_thresholds == result.coral_thresholds
    assert model.config.prototype_calibration_temperature == result.prototype_calibration_temperature
    # The model's own decision now uses the tuned values and scores what calibration measured.
    reports = evaluate_modes(model, validation.view_features(model), validation.grades)
    assert reports["ordinal"]["qwk"] == pytest.approx(result.ordinal_qwk_after)


def test_trainer_samples_balanced_batches_and_draws_every_view(trained):
    trainer, train, _ = trained
    from retinascan_hf.training.splits import epoch_plan

    plan = list(epoch_plan(trainer.sampler, epoch=0, seed=0, n_views=2, rank=0))
    assert len(plan) == 10
    grades = torch.stack([train.grades[torch.tensor([row for row, _ in batch])] for batch in plan])
    assert (torch.stack([(grades == grade).sum(1) for grade in range(5)]) == 8).all()
    views = {view for batch in plan for _, view in batch}
    assert views == {0, 1}
    assert plan == list(epoch_plan(trainer.sampler, epoch=0, seed=0, n_views=2, rank=0))  # reproducible
