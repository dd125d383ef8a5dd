"""`run_training` end to end on a synthetic corpus: the model folder, its calibration, bank and metrics."""

from __future__ import annotations

import json

import pytest
import torch
from training_support import small_config
from transformers import pipeline

from retinascan_hf import FeatureBank, RetinaScanModel
from retinascan_hf.modeling_retinascan import DECISION_MODES, decide
from retinascan_hf.synthetic import save_synthetic_corpus
from retinascan_hf.training import run_training
from retinascan_hf.training.evaluation import head_outputs
from retinascan_hf.training.tracking import read_csv_metrics

COUNTS = {"train": (8, 6, 6, 4, 4), "validation": (4,) * 5, "test": (3,) * 5}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus") / "corpus"
    return directory, save_synthetic_corpus(directory, COUNTS, size=48, seed=0)


@pytest.fixture(scope="module")
def result(tmp_path_factory, corpus):
    output = tmp_path_factory.mktemp("run")
    config = small_config(output, data=str(corpus[0]), cache_dir=str(output / "cache"), log_with=["csv", "tensorboard"])
    return run_training(config)


def test_model_folder_is_complete_and_carries_the_calibration(result, corpus):
    folder = result.model_dir
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "feature_bank.safetensors"}
    assert expected <= {path.name for path in folder.iterdir()}
    model = RetinaScanModel.from_pretrained(folder)
    calibration = result.metrics["calibration"]
    assert model.config.coral_thresholds == pytest.approx(calibration["coral_thresholds"])
    assert model.config.ordinal_temperature == pytest.approx(calibration["ordinal_temperature"])
    assert model.config.prototype_calibration_temperature == pytest.approx(
        calibration["prototype_calibration_temperature"]
    )
    trained = result.trainer.unwrapped_model.state_dict()
    assert all(torch.equal(tensor, trained[name].cpu()) for name, tensor in model.state_dict().items())
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(f".{folder.name}.")]


def test_feature_bank_holds_the_unaugmented_training_images(result, corpus):
    bank = FeatureBank.from_pretrained(result.model_dir)
    train = corpus[1]["train"]
    assert bank.image_ids == train["image_id"] and bank.sources == train["source"]
    assert bank.grades.tolist() == train["grade"]
    model = result.trainer.unwrapped_model
    features = result.trainer.train_split.view_features(model)
    embeddings = head_outputs(model, features).embeddings
    assert torch.allclose(bank.embeddings.float(), embeddings, atol=2e-3)  # fp16 storage
    assert bank.config_hash == model.config.embedding_hash()


@pytest.mark.parametrize("mode", DECISION_MODES)
def test_pipeline_from_the_folder_grades_as_the_evaluation_did(result, corpus, mode):
    grader = pipeline("retinascan", model=str(result.model_dir), trust_remote_code=True)
    test = corpus[1]["test"]
    predicted = [item["grade"] for item in grader(list(test["image"]), mode=mode)]
    model = result.trainer.unwrapped_model
    split = run_splits(result)["test"]
    bank = FeatureBank.from_pretrained(result.model_dir)
    grades = decide(head_outputs(model, split.view_features(model)), mode, model.config, bank).grades
    assert predicted == grades.tolist()
    assert result.metrics["evaluation"]["test"][mode]["accuracy"] == pytest.approx(
        (torch.tensor(predicted) == torch.tensor(test["grade"])).float().mean().item()
    )


def run_splits(result):
    """The test split as the run cached it (the trainer keeps train and validation only)."""
    from accelerate import Accelerator

    from retinascan_hf.training.run import load_backbone, load_corpus, prepare_splits

    config = result.trainer.config
    model, processor = load_backbone(config)
    splits, report = prepare_splits(model, processor, load_corpus(config.data), config, Accelerator(cpu=True))
    assert report["feature_cache"]["total"]["computed"] == 0
    return splits


def test_metrics_summary_and_logs(result):
    output = result.model_dir.parent
    metrics = json.loads((output / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert set(metrics["evaluation"][split]) == set(DECISION_MODES)
        report = metrics["evaluation"][split]["knn"]
        assert len(report["per_grade"]) == 5 and len(report["confusion_matrix"]) == 5
    assert metrics["training"]["epochs"] == 4 and len(metrics["training"]["history"]) == 4
    assert metrics["training"]["best_val_qwk"] == max(epoch["val/qwk"] for epoch in metrics["training"]["history"])
    assert metrics["data"]["train"] == {"images": 28, "per_grade": [8, 6, 6, 4, 4]}
    assert {"features_seconds", "training_seconds", "finalize_seconds"} == set(metrics["timings"])
    assert (output / "confusion_matrix.png").stat().st_size > 0
    logged = read_csv_metrics(output / "logs" / "retinascan" / "metrics.csv")
    assert len(logged["val/qwk"]) == 4 and len(logged["train/loss"]) == 4
    assert list((output / "logs" / "retinascan").glob("events.out.tfevents.*"))


def test_end_to_end_fine_tuning_with_layerwise_decay(tmp_path, corpus):
    config = small_config(
        tmp_path, data=str(corpus[0]), freeze_backbone=False, layerwise_lr_decay=0.5, num_epochs=1, batches_per_epoch=2
    )
    from retinascan_hf.training.run import load_backbone

    before = load_backbone(config)[0].state_dict()
    result = run_training(config)
    after = result.trainer.unwrapped_model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name].cpu())}
    assert "clip.vision_model.encoder.layers.0.mlp.fc1.weight" in changed
    assert "clip.visual_projection.weight" in changed
    assert not any(name.startswith("clip.text_model.") for name in changed)
    assert result.metrics["feature_cache"] is None
    learning_rates = [group["initial_lr"] for group in result.trainer.optimizer.param_groups]
    assert learning_rates == sorted(learning_rates) and learning_rates[0] < learning_rates[-1]
    assert RetinaScanModel.from_pretrained(result.model_dir).config.freeze_backbone is False


def test_training_writes_a_model_card_from_its_own_numbers(result):
    from huggingface_hub import ModelCard

    card = ModelCard.load(result.model_dir / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-classification"
    qwk = next(
        m["value"] for m in data["model-index"][0]["results"][0]["metrics"] if m["type"] == "quadratic_weighted_kappa"
    )
    assert qwk == pytest.approx(result.metrics["evaluation"]["test"]["knn"]["qwk"], abs=1e-4)
    assert "not a medical device" in card.text and "feature_bank.safetensors" in card.text
    sizes = " | ".join(str(result.metrics["data"][split]["images"]) for split in ("train", "validation", "test"))
    assert f"| synthetic | {sizes} | 0 |" in card.text  # images per split, from the corpus's build report
