"""After training: best weights, calibration, the feature bank, conformal grade sets, test evaluation, one
complete model folder.

The folder is what `RetinaScanModel.from_pretrained` and `pipeline("retinascan", model=DIR,
trust_remote_code=True)` load: weights and config (with the fitted temperatures and thresholds), the
remote code, the image processor and `feature_bank.safetensors`. It is staged and renamed into place, so a
crash never leaves a half-written model where a previous good one was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from transformers.utils import CONFIG_NAME

from ..atomic_io import atomic_directory
from ..feature_bank import FeatureBank, OODReference
from ..image_processing_retinascan import RetinaScanImageProcessor
from ..metrics.plots import save_confusion_matrix
from ..modeling_retinascan import RetinaScanModel
from ..release.card import write_training_card
from .calibration import CalibrationResult, calibrate
from .checkpointing import load_best_weights
from .config import TrainingConfig
from .conformal import ConformalResult, fit_conformal
from .evaluation import evaluate_modes, head_outputs
from .ood import OODCalibration, fit_ood_threshold, flagged_fraction
from .splits import TrainingSplit

MODEL_DIR_NAME = "model"
METRICS_NAME = "metrics.json"
CONFUSION_MATRIX_NAME = "confusion_matrix.png"


def build_feature_bank(model: RetinaScanModel, train: TrainingSplit, batch_size: int) -> FeatureBank:
    """Embeddings of the un-augmented training images under the final heads, with grades, ids and sources, and
    the OOD reference: the backbone's image embeddings of (a sample of) the same images."""
    features = train.view_features(model)
    embeddings = head_outputs(model, features, batch_size).embeddings
    return FeatureBank(
        embeddings,
        train.grades.cpu(),
        sources=train.sources,
        image_ids=train.image_ids,
        num_labels=model.config.num_labels,
        config_hash=model.config.embedding_hash(),
        ood_reference=OODReference.sample(features.float().cpu()),
    )


def calibrate_model(model: RetinaScanModel, validation: TrainingSplit, config: TrainingConfig) -> CalibrationResult:
    """Fit temperatures and thresholds on the validation split and write them into `model.config`."""
    outputs = head_outputs(model, validation.view_features(model), config.eval_batch_size)
    result = calibrate(
        outputs.ordinal_logits,
        outputs.prototype_logits,
        validation.grades,
        fit_temperatures=config.calibrate,
        fit_thresholds=config.tune_thresholds,
        min_grade_recall=config.min_grade_recall,
    )
    result.apply(model.config)
    return result


def calibrate_ood(
    model: RetinaScanModel, bank: FeatureBank, splits: dict[str, TrainingSplit], config: TrainingConfig
) -> dict[str, Any] | None:
    """Fit the OOD threshold on the validation images' backbone features, write it into `model.config`, and
    report the fraction of each evaluated split it flags (the in-distribution price of the check); `None` if it
    cannot be fitted."""
    features = {name: split.view_features(model) for name, split in splits.items() if name != "train" and len(split)}
    calibration: OODCalibration | None = fit_ood_threshold(bank, features["validation"], config.ood_quantile)
    if calibration is None:
        return None
    calibration.apply(model)
    flagged = {name: flagged_fraction(bank, values, calibration.threshold) for name, values in features.items()}
    return {**calibration.to_dict(), "flagged_fraction": flagged}


def calibrate_grade_sets(
    model: RetinaScanModel, validation: TrainingSplit, bank: FeatureBank, config: TrainingConfig
) -> ConformalResult:
    """Split-conformal calibration of every mode's grade sets on the validation split, written into
    `model.config`. Runs after everything that shapes a decision (temperatures, thresholds, bank)."""
    outputs = head_outputs(model, validation.view_features(model), config.eval_batch_size)
    result = fit_conformal(outputs, validation.grades.cpu(), model.config, bank)
    result.apply(model.config)
    return result


def majority_baseline(train_grades: torch.Tensor, test_grades: torch.Tensor) -> dict[str, Any]:
    """What always answering the most frequent training grade scores: the floor any model must beat."""
    majority = int(torch.bincount(train_grades.cpu()).argmax())
    return {"grade": majority, "accuracy": float((test_grades.cpu() == majority).float().mean()), "qwk": 0.0}


def finalize(
    model: RetinaScanModel,
    processor: RetinaScanImageProcessor,
    splits: dict[str, TrainingSplit],
    config: TrainingConfig,
    accelerator: Accelerator,
    report: dict[str, Any],
) -> dict[str, Any]:
    """Load the best weights, calibrate, build the bank, calibrate the grade sets, evaluate validation and test in
    every decision mode,
    and (main process only) write `model/` and the test confusion matrix.

    Every process computes the same numbers (they may all be needed for distributed feature forwards);
    `report` (data, cache, training facts) is extended and returned as the metrics summary.
    """
    output_dir = Path(config.output_dir)
    used_best = load_best_weights(model, output_dir / "best")
    calibration = calibrate_model(model, splits["validation"], config)
    bank = build_feature_bank(model, splits["train"], config.eval_batch_size)
    ood = calibrate_ood(model, bank, splits, config)
    # Conformal grade sets: last of the calibrations, as it measures the final decisions.
    conformal = calibrate_grade_sets(model, splits["validation"], bank, config)
    evaluation = {
        name: evaluate_modes(model, split.view_features(model), split.grades, bank, config.eval_batch_size)
        for name, split in splits.items()
        if name != "train" and len(split)
    }
    model_dir = output_dir / MODEL_DIR_NAME
    metrics = {
        **report,
        "best_weights_used": used_best,
        "calibration": calibration.to_dict(),
        "ood": ood,
        "conformal": {"calibration_size": conformal.calibration_size, "coverage": model.config.conformal_coverage},
        "evaluation": evaluation,
        "model_dir": str(model_dir),
    }
    if "test" in evaluation:
        metrics["majority_baseline_test"] = majority_baseline(splits["train"].grades, splits["test"].grades)
    if accelerator.is_main_process:
        with atomic_directory(model_dir, marker=CONFIG_NAME) as staging:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
            bank.save_pretrained(staging)
            write_training_card(staging, model.config, metrics, data_dir=config.data, backbone=config.backbone)
        if "test" in evaluation:
            knn = evaluation["test"]["knn"]
            metrics["confusion_matrix_png"] = save_confusion_matrix(
                np.asarray(knn["confusion_matrix"]),
                output_dir / CONFUSION_MATRIX_NAME,
                f"test, kNN: QWK {knn['qwk']:.3f}",
            )
    accelerator.wait_for_everyone()
    return metrics


__all__ = [
    "CONFUSION_MATRIX_NAME",
    "METRICS_NAME",
    "MODEL_DIR_NAME",
    "build_feature_bank",
    "calibrate_grade_sets",
    "calibrate_model",
    "calibrate_ood",
    "finalize",
    "majority_baseline",
]
