"""`run_training(config)`: corpus folder in, finished model folder and `metrics.json` summary out.

The whole job, in order: the corpus (checked first: a bad folder fails in a second, not after the backbone
download); the backbone and its processor; the splits (cached backbone features
when the backbone is frozen, images otherwise); the training loop; then `finalize` (best weights,
calibration, feature bank, evaluation, model folder). `scripts/train.py` and `retinascan train` only parse
arguments and call this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from ..atomic_io import recover_directory, write_json_atomically
from ..configuration_retinascan import ICDR_LABELS
from ..corpus import SPLITS
from ..image_processing_retinascan import RetinaScanImageProcessor
from ..modeling_retinascan import RetinaScanModel
from ..progress import progress_bars
from ..tiny_clip import random_retinascan, trainable_tiny_clip_config
from .augment import FundusAugmentation
from .config import TINY_BACKBONE, TrainingConfig
from .data import FundusViews
from .export import METRICS_NAME, finalize
from .feature_cache import CacheStats, FeatureCache, augmentation_key, backbone_fingerprint, cached_features
from .splits import CachedSplit, ImageSplit, TrainingSplit
from .trainer import RetinaScanTrainer, make_accelerator

REQUIRED_COLUMNS = ("image", "grade", "source", "image_id")

logger = get_logger(__name__)


@dataclass
class TrainingResult:
    """What a run produced: the model folder, the metrics summary (also in `metrics.json`), the trainer."""

    model_dir: Path
    metrics: dict[str, Any]
    trainer: RetinaScanTrainer


def load_backbone(config: TrainingConfig) -> tuple[RetinaScanModel, RetinaScanImageProcessor]:
    """The untrained model and its processor: a pretrained CLIP (`from_backbone`), or the offline tiny one."""
    overrides = config.model_overrides()
    if config.backbone == TINY_BACKBONE:
        clip_config = trainable_tiny_clip_config(image_size=config.tiny_image_size)
        return random_retinascan(clip_config, seed=config.seed, **overrides)
    model = RetinaScanModel.from_backbone(config.backbone, **overrides)
    return model, RetinaScanImageProcessor.for_backbone(model.config.backbone_config)


def load_corpus(path: str | None) -> datasets.DatasetDict:
    """The corpus `DatasetDict`, checked for the splits and columns training reads."""
    if not path:
        raise ValueError("No corpus given: pass --data DIR (a DatasetDict saved by `retinascan data build`).")
    recover_directory(path)  # a build killed while replacing this folder left it aside
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"Corpus folder {path} does not exist: pass --data DIR, a folder `retinascan data build` wrote."
        )
    corpus = datasets.load_from_disk(str(path))
    if not isinstance(corpus, datasets.DatasetDict):
        raise ValueError(f"{path} holds a single Dataset; training needs a DatasetDict with splits {SPLITS}.")
    missing = [split for split in SPLITS[:2] if split not in corpus or len(corpus[split]) == 0]
    if missing:
        raise ValueError(f"{path} has no (or an empty) {missing} split; training needs train and validation.")
    for name, split in corpus.items():
        lacking = [column for column in REQUIRED_COLUMNS if column not in split.column_names]
        if lacking:
            raise ValueError(f"Split {name!r} of {path} lacks column(s) {lacking}.")
    present = set(corpus["train"]["grade"])
    absent = [f"{grade} ({label})" for grade, label in enumerate(ICDR_LABELS) if grade not in present]
    if absent:
        raise ValueError(
            f"The train split of {path} has no image of grade {', '.join(absent)}: every balanced batch needs each "
            "grade. Add images of that grade to the corpus (or rebuild it with other sources or split ratios)."
        )
    return corpus


def prepare_splits(
    model: RetinaScanModel,
    processor: RetinaScanImageProcessor,
    corpus: datasets.DatasetDict,
    config: TrainingConfig,
    accelerator: Accelerator,
) -> tuple[dict[str, TrainingSplit], dict[str, Any]]:
    """Training splits and a report of how they were made (cache hits and misses per split).

    With a frozen backbone every split becomes cached features: `n_views` views of each training image, the
    un-augmented view of validation and test images.
    """
    augmentation = FundusAugmentation(
        flip=config.aug_flip,
        rotation=config.aug_rotation,
        brightness=config.aug_brightness,
        contrast=config.aug_contrast,
    )
    views = {name: FundusViews(corpus[name], processor, augmentation, config.seed) for name in SPLITS if name in corpus}
    if not model.config.freeze_backbone:
        splits = {
            name: ImageSplit(dataset, accelerator, config.feature_batch_size, config.num_workers, config.progress)
            for name, dataset in views.items()
        }
        return splits, {"feature_cache": None}
    model.to(accelerator.device)
    cache = FeatureCache(
        config.resolved_cache_dir, backbone_fingerprint(model, processor), augmentation_key(augmentation, config.seed)
    )
    splits, stats = {}, {}
    for name, dataset in views.items():
        features, stats[name] = cached_features(
            model,
            dataset,
            name,
            config.n_views if name == "train" else 1,
            cache=cache,
            accelerator=accelerator,
            batch_size=config.feature_batch_size,
            num_workers=config.num_workers,
            progress=config.progress,
        )
        sources = list(dataset.split["source"])
        splits[name] = CachedSplit(features, torch.tensor(dataset.grades), dataset.image_ids, sources)
    total = CacheStats()
    for split_stats in stats.values():
        total += split_stats
    report = {
        "directory": str(cache.directory),
        "fingerprint": cache.fingerprint,
        "splits": {name: vars(value) for name, value in stats.items()},
        "total": vars(total),
    }
    return splits, {"feature_cache": report}


def run_training(config: TrainingConfig, accelerator: Accelerator | None = None) -> TrainingResult:
    """Train, calibrate, build the bank, evaluate and save; see the module docstring. With `config.progress`
    false no progress bar of any library shows."""
    with progress_bars(config.progress):
        return _run_training(config, accelerator or make_accelerator(config))


def _run_training(config: TrainingConfig, accelerator: Accelerator) -> TrainingResult:
    set_seed(config.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    corpus = load_corpus(config.data)
    model, processor = load_backbone(config)
    splits, report = prepare_splits(model, processor, corpus, config, accelerator)
    timings["features_seconds"] = time.perf_counter() - started
    if report["feature_cache"] is not None:
        total = report["feature_cache"]["total"]
        logger.info(
            "Backbone features: %d computed, %d reused from %s.",
            total["computed"],
            total["reused"],
            report["feature_cache"]["directory"],
        )

    train_split = splits["train"]
    if isinstance(train_split, CachedSplit):
        model.set_feature_statistics(train_split.features)

    started = time.perf_counter()
    trainer = RetinaScanTrainer(model, config, splits["train"], splits["validation"], accelerator)
    progress = trainer.train()
    timings["training_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    report = {
        **report,
        "data": {name: _describe(split, model.config.num_labels) for name, split in splits.items()},
        "training": {
            "epochs": progress.epoch,
            "optimizer_steps": progress.global_step,
            "best_epoch": progress.best_epoch,
            "best_val_qwk": progress.best_qwk,
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "weight_checksums": trainer.weight_checksums(),
            "history": trainer.history,
        },
        "config": config.to_dict(),
    }
    metrics = finalize(trainer.unwrapped_model, processor, splits, config, accelerator, report)
    timings["finalize_seconds"] = time.perf_counter() - started
    metrics["timings"] = timings
    if accelerator.is_main_process:
        write_json_atomically(Path(config.output_dir) / METRICS_NAME, metrics)
    logger.info("Model folder %s written; metrics in %s.", metrics["model_dir"], Path(config.output_dir) / METRICS_NAME)
    accelerator.end_training()
    return TrainingResult(Path(metrics["model_dir"]), metrics, trainer)


def _describe(split: TrainingSplit, num_labels: int) -> dict[str, Any]:
    return {"images": len(split), "per_grade": torch.bincount(split.grades.cpu(), minlength=num_labels).tolist()}


__all__ = ["TrainingResult", "load_backbone", "load_corpus", "prepare_splits", "run_training"]
