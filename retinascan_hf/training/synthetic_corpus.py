"""A small procedural corpus in the corpus schema, for the quickstart and tests (no data, no network).

Rows look exactly like `retinascan data build` output (`image`, `grade` ClassLabel, `source`, `image_id`,
`patient_id`, `eye`), so everything downstream is exercised unchanged; the images come from
`retinascan_hf.synthetic` and are embedded (PNG) so the saved corpus is self-contained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np

from ..atomic_io import atomic_directory
from ..corpus import corpus_features
from ..synthetic import synthetic_fundus_set

SOURCE = "synthetic"
# Images per grade 0-4 in each split: skewed towards grade 0 like screening data, every grade present.
DEFAULT_GRADE_COUNTS: dict[str, tuple[int, ...]] = {
    "train": (120, 48, 72, 32, 28),
    "validation": (20, 10, 12, 8, 8),
    "test": (20, 10, 12, 8, 8),
}


def synthetic_corpus(
    grade_counts: Mapping[str, Sequence[int]] | None = None, *, size: int = 64, seed: int = 0
) -> datasets.DatasetDict:
    """A `DatasetDict` with one split per entry of `grade_counts` (images per grade), rows shuffled.

    Each image is its own "patient" (synthetic images are independent draws), eyes alternate.
    """
    grade_counts = grade_counts or DEFAULT_GRADE_COUNTS
    splits = {}
    for offset, (split, counts) in enumerate(grade_counts.items()):
        rng = np.random.default_rng([seed, offset])
        grades = rng.permutation(np.repeat(np.arange(len(counts)), counts)).tolist()
        ids = [f"{SOURCE}/{split}-{index:05d}" for index in range(len(grades))]
        splits[split] = datasets.Dataset.from_dict(
            {
                "image": synthetic_fundus_set(grades, size=size, seed=seed * 1000 + offset),
                "grade": grades,
                "source": [SOURCE] * len(grades),
                "image_id": ids,
                "patient_id": ids,
                "eye": [("left", "right")[index % 2] for index in range(len(grades))],
            },
            features=corpus_features(),
            split=datasets.NamedSplit(split),
        )
    return datasets.DatasetDict(splits)


def save_synthetic_corpus(
    directory: str | Path, grade_counts: Mapping[str, Sequence[int]] | None = None, *, size: int = 64, seed: int = 0
) -> datasets.DatasetDict:
    """Build a synthetic corpus and write it (atomically) where `datasets.load_from_disk` reads it."""
    corpus = synthetic_corpus(grade_counts, size=size, seed=seed)
    with atomic_directory(Path(directory), marker=datasets.config.DATASETDICT_JSON_FILENAME) as staging:
        corpus.save_to_disk(str(staging))
    return corpus


__all__ = ["DEFAULT_GRADE_COUNTS", "SOURCE", "save_synthetic_corpus", "synthetic_corpus"]
