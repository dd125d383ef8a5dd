"""`retinascan quickstart`: the whole workflow in about a minute on a laptop CPU, with no data and no network.

Synthetic corpus -> tiny random CLIP -> cached features -> head training -> calibration -> feature bank ->
test evaluation in every decision mode -> model folder -> grading through `pipeline("retinascan")`.

What it shows is that every stage runs and connects, not accuracy: the backbone is a randomly initialised
tiny CLIP, whose features carry little of the (synthetic) lesion signal, so expect QWK well below what a
pretrained CLIP reaches. Nothing it prints is a clinical result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..progress import progress_bars
from ..synthetic import save_synthetic_corpus
from .config import TINY_BACKBONE, TrainingConfig
from .evaluation import format_evaluation
from .export import MODEL_DIR_NAME
from .run import run_training

CORPUS_DIR_NAME = "corpus"
IMAGE_SIZE = 64
IMAGES_TO_GRADE = 5

logger = logging.get_logger(__name__)


@dataclass
class QuickstartResult:
    """Where the quickstart wrote its outputs, what it measured, and the pipeline's answers."""

    output_dir: Path
    model_dir: Path
    corpus_dir: Path
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    seconds: float


def quickstart_config(output_dir: Path, seed: int, progress: bool) -> TrainingConfig:
    """The reference configuration, scaled to a 300-image corpus and a tiny head: 300 steps instead of
    ~20,000, hence a 10x learning rate and a 1-epoch warm-up."""
    return TrainingConfig(
        data=str(output_dir / CORPUS_DIR_NAME),
        output_dir=str(output_dir),
        backbone=TINY_BACKBONE,
        tiny_image_size=IMAGE_SIZE,
        cache_dir=str(output_dir / "feature-cache"),
        feature_batch_size=128,  # a 64 px tiny tower: per-forward overhead, not pixels, dominates at 32
        num_epochs=30,
        batches_per_epoch=10,
        warmup_epochs=1,
        learning_rate=1e-3,
        seed=seed,
        cpu=True,
        progress=progress,
        overwrite_output_dir=True,  # the quickstart's own folder: re-running it starts over
    )


def quickstart(
    output_dir: str | Path = "retinascan-quickstart",
    *,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> QuickstartResult:
    """Run the whole workflow into `output_dir` (`corpus/`, `model/`, `metrics.json`, `confusion_matrix.png`,
    plus `checkpoints/`, `best/`, `logs/` and `feature-cache/`), reporting each stage through `log` (default:
    this module's logger at INFO; `retinascan quickstart` passes `print`). `progress=False` hides every bar."""
    with progress_bars(progress):
        return _quickstart(Path(output_dir).absolute(), seed, progress, log or logger.info)


def _quickstart(output_dir: Path, seed: int, progress: bool, log: Callable[[str], None]) -> QuickstartResult:
    from transformers import pipeline

    started = time.perf_counter()
    corpus_dir = output_dir / CORPUS_DIR_NAME
    corpus = save_synthetic_corpus(corpus_dir, size=IMAGE_SIZE, seed=seed)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in corpus.items())
    log(f"[1/4] Synthetic fundus corpus ({sizes} images) -> {corpus_dir}")

    config = quickstart_config(output_dir, seed, progress)
    log(f"[2/4] Training heads on a tiny random CLIP ({IMAGE_SIZE} px) for {config.num_epochs} epochs on CPU ...")
    result = run_training(config)
    metrics = result.metrics
    cache = metrics["feature_cache"]["total"]
    training = metrics["training"]
    log(
        f"      {cache['computed']} backbone forwards cached ({cache['reused']} reused); best validation QWK "
        f"{training['best_val_qwk']:.3f} at epoch {training['best_epoch']}; calibrated and tuned on validation."
    )
    log(f"[3/4] Test split, {metrics['data']['test']['images']} images (a random backbone: not a clinical result):")
    log(format_evaluation(metrics["evaluation"]["test"], metrics["majority_baseline_test"]))

    grader = pipeline("retinascan", model=str(result.model_dir), trust_remote_code=True)
    test = corpus["test"].select(range(IMAGES_TO_GRADE))
    predictions = grader(list(test["image"]))
    log(f"[4/4] pipeline('retinascan', model={result.model_dir}) on {IMAGES_TO_GRADE} test images:")
    for truth, prediction in zip(test["grade"], predictions, strict=True):
        if prediction["gradable"]:
            outcome = f"{prediction['grade']} ({prediction['label']}; mode {prediction['mode']})"
        else:
            outcome = f"not graded ({prediction['error_type']}: {prediction['reason']})"
        log(f"      true grade {truth} -> {outcome}")

    seconds = time.perf_counter() - started
    log(f"Done in {seconds:.0f} s. Outputs in {output_dir}:")
    log(f"      {MODEL_DIR_NAME}/ (model folder: weights, config, processor, feature bank, pipeline code)")
    log(f"      {CORPUS_DIR_NAME}/ (datasets.load_from_disk), metrics.json, confusion_matrix.png, logs/metrics.csv")
    return QuickstartResult(output_dir, result.model_dir, corpus_dir, metrics, predictions, seconds)


__all__ = ["QuickstartResult", "quickstart", "quickstart_config"]
