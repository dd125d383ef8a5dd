"""Procedural fundus-like images whose lesion load grows with the ICDR grade.

They are *synthetic*: a bright disc on black with vignetting, an optic disc, vessels, and lesions
(red dots for microaneurysms/haemorrhages, yellow spots for exudates, tangled new vessels for PDR)
whose number rises with grade. They exercise the whole stack (fundus cropping, training, calibration,
the bank) without any real data, and a model can learn them, but nothing learned on them is clinical.

`synthetic_corpus` packs them into rows that look exactly like `retinascan data build` output (`image`,
`grade` ClassLabel, `source`, `image_id`, `patient_id`, `eye`), so everything downstream of the corpus is
exercised unchanged; the images are embedded (PNG), so a saved corpus is self-contained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .atomic_io import atomic_directory
from .corpus import corpus_features

SOURCE = "synthetic"

# Lesion counts per grade: (red dots, exudates, new-vessel tangles). Ranges overlap a little between
# neighbouring grades, as real grading does.
_LESIONS_PER_GRADE = {
    0: ((0, 1), (0, 0), (0, 0)),
    1: ((3, 7), (0, 1), (0, 0)),
    2: ((8, 14), (3, 7), (0, 0)),
    3: ((16, 26), (6, 12), (0, 0)),
    4: ((16, 26), (6, 12), (2, 4)),
}


def render_fundus(grade: int, size: int = 96, rng: np.random.Generator | None = None) -> Image.Image:
    """One RGB fundus-like image of `grade` (0-4), `size` x `size` pixels."""
    if grade not in _LESIONS_PER_GRADE:
        raise ValueError(f"grade must be 0-4, got {grade}.")
    rng = rng if rng is not None else np.random.default_rng()
    scale = 4  # draw at 4x, then downsample: smooth edges without an anti-aliasing library
    side = size * scale
    radius = side * rng.uniform(0.40, 0.47)
    centre = side / 2 + rng.uniform(-0.04, 0.04, size=2) * side

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    distance = np.hypot(xx - centre[0], yy - centre[1]) / radius
    base = np.array([rng.uniform(170, 215), rng.uniform(70, 100), rng.uniform(25, 45)], np.float32)
    vignette = np.clip(1.0 - 0.45 * distance**2, 0, 1)[..., None]
    pixels = np.where(distance[..., None] <= 1.0, base * vignette, 0.0).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)

    disc_angle = rng.uniform(-0.3, 0.3) + (0 if rng.random() < 0.5 else np.pi)
    disc = centre + 0.45 * radius * np.array([np.cos(disc_angle), np.sin(disc_angle)])
    disc_r = 0.11 * radius
    draw.ellipse([*(disc - disc_r), *(disc + disc_r)], fill=(250, 225, 150))

    for _ in range(6):  # vessels: random walks leaving the optic disc
        point, angle = disc.copy(), rng.uniform(0, 2 * np.pi)
        for _ in range(12):
            angle += rng.normal(0, 0.25)
            step = point + 0.09 * radius * np.array([np.cos(angle), np.sin(angle)])
            draw.line([*point, *step], fill=(120, 25, 20), width=max(1, int(side * 0.008)))
            point = step

    def random_points(count: int) -> np.ndarray:
        angles = rng.uniform(0, 2 * np.pi, count)
        radii = radius * 0.85 * np.sqrt(rng.uniform(0, 1, count))
        return centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)

    (red_lo, red_hi), (ex_lo, ex_hi), (nv_lo, nv_hi) = _LESIONS_PER_GRADE[grade]
    for x, y in random_points(int(rng.integers(red_lo, red_hi + 1))):
        r = side * rng.uniform(0.012, 0.024)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(90, 10, 10))
    for x, y in random_points(int(rng.integers(ex_lo, ex_hi + 1))):
        r = side * rng.uniform(0.012, 0.022)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(245, 230, 110))
    for x, y in random_points(int(rng.integers(nv_lo, nv_hi + 1))):
        squiggle = np.array([x, y]) + rng.normal(0, side * 0.03, size=(8, 2))
        draw.line([tuple(p) for p in squiggle], fill=(150, 20, 30), width=max(1, int(side * 0.004)))

    outside = Image.fromarray(((distance > 1.0) * 255).astype(np.uint8), "L")
    image.paste((0, 0, 0), mask=outside)  # keep vessels and lesions inside the field of view
    image = image.filter(ImageFilter.GaussianBlur(radius=scale * 0.6))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def synthetic_fundus_set(grades: list[int] | np.ndarray, size: int = 96, seed: int = 0) -> list[Image.Image]:
    """One image per requested grade, reproducible for a given `seed`."""
    rng = np.random.default_rng(seed)
    return [render_fundus(int(grade), size=size, rng=rng) for grade in grades]


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


__all__ = [
    "DEFAULT_GRADE_COUNTS",
    "SOURCE",
    "render_fundus",
    "save_synthetic_corpus",
    "synthetic_corpus",
    "synthetic_fundus_set",
]
