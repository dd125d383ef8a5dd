"""Builders shared by the training tests: features with a known grade structure and small configurations.

Plain functions rather than fixtures, so each test states the sizes it needs; everything is tiny and seeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from retinascan_hf.synthetic import save_synthetic_corpus
from retinascan_hf.training import CachedSplit, TrainingConfig

TINY_DIM = 32  # embedding width of `random_retinascan()`'s default tiny CLIP


def grade_structured_split(
    n_per_grade: int, seed: int, *, n_views: int = 1, noise: float = 0.25, dim: int = TINY_DIM, name: str = "split"
) -> CachedSplit:
    """Features `base + grade * direction + noise` (per view, `base` and `direction` unit vectors fixed for all
    seeds): grades lie in order along one direction, as a backbone that "sees" lesion load would place them."""
    axes = torch.Generator().manual_seed(1234)
    base, direction = (torch.nn.functional.normalize(torch.randn(dim, generator=axes), dim=0) for _ in range(2))
    grades = torch.arange(5).repeat_interleave(n_per_grade)
    noise_draw = torch.randn(len(grades), n_views, dim, generator=torch.Generator().manual_seed(seed))
    features = base + grades[:, None, None].float() * direction + noise * noise_draw
    ids = [f"{name}/{index}" for index in range(len(grades))]
    return CachedSplit(features, grades, ids, ["synthetic"] * len(grades))


SMALL_CORPUS_COUNTS = {"train": (6,) * 5, "validation": (3,) * 5, "test": (2,) * 5}


def save_small_corpus(directory: Path) -> Path:
    """A 55-image synthetic corpus (48 px) saved at `directory`, for runs of `run_training`."""
    save_synthetic_corpus(directory, SMALL_CORPUS_COUNTS, size=48, seed=0)
    return directory


def small_config(output_dir: Path, **overrides: Any) -> TrainingConfig:
    """A CPU run that finishes in about a second: few short epochs, no progress bars, CSV logs only."""
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "backbone": "tiny",
        "num_epochs": 4,
        "batches_per_epoch": 3,
        "n_per_class": 4,
        "n_views": 2,
        "warmup_epochs": 1,
        "learning_rate": 1e-3,
        "cpu": True,
        "progress": False,
        "seed": 0,
        "feature_batch_size": 16,
        **overrides,
    }
    return TrainingConfig(**values)
