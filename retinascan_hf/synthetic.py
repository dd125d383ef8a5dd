"""Procedural fundus-like images whose lesion load grows with the ICDR grade.

They are *synthetic*: a bright disc on black with vignetting, an optic disc, vessels, and lesions
(red dots for microaneurysms/haemorrhages, yellow spots for exudates, tangled new vessels for PDR)
whose number rises with grade. They exercise the whole stack (fundus cropping, training, calibration,
the bank) without any real data, and a model can learn them, but nothing learned on them is clinical.

`synthetic_corpus` packs them into rows that look exactly like `retinascan data build` output (`image`,
`grade` ClassLabel, `source`, `image_id`, `patient_id`, `eye`), so everything downstream of the corpus is
exercised unchanged; the images are embedded (PNG), so a saved corpus is self-contained.

`render_non_fundus` draws the opposite: pictures a careless user or an attacker might send instead of a fundus
photograph (noise, flat colours, checkerboards, gradients, text documents, natural-like scenes, colour
blobs, a plain orange disc, and harder variants masked to a round field of view on black). They measure
how often the pipeline's gradability checks flag what must not be graded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .atomic_io import atomic_directory
from .corpus import corpus_features
from .corpus.report import REPORT_FILE, BuildReport, SourceCounts

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
    """Build a synthetic corpus and write it (atomically) where `datasets.load_from_disk` reads it, with the
    `build_report.json` a real build writes (images per source and split), so model cards and reports describe
    a quickstart model's training data like any other."""
    grade_counts = grade_counts or DEFAULT_GRADE_COUNTS
    total = sum(sum(counts) for counts in grade_counts.values())
    if total <= 0:
        raise ValueError(f"A synthetic corpus needs at least one image; grade_counts asks for none: {grade_counts}.")
    corpus = synthetic_corpus(grade_counts, size=size, seed=seed)
    report = BuildReport(
        protocol="synthetic",
        seed=seed,
        val_ratio=sum(grade_counts.get("validation", ())) / total,
        test_ratio=sum(grade_counts.get("test", ())) / total,
        sources={SOURCE: SourceCounts(found=total, kept=total)},
        splits={split: {SOURCE: list(counts)} for split, counts in grade_counts.items()},
        excluded=[],
    )
    with atomic_directory(Path(directory), marker=datasets.config.DATASETDICT_JSON_FILENAME) as staging:
        corpus.save_to_disk(str(staging))
        report.save(staging / REPORT_FILE)
    return corpus


def _random_colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(value) for value in rng.integers(low, high, size=3))


def _noise(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    if rng.random() < 0.5:
        return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    pixels = rng.normal(rng.uniform(60, 200), rng.uniform(15, 60), size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _flat(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), _random_colour(rng))


def _checkerboard(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    tile = int(rng.integers(4, max(5, min(width, height) // 3)))
    yy, xx = np.mgrid[0:height, 0:width]
    odd = ((yy // tile + xx // tile) % 2).astype(bool)
    pixels = np.where(odd[..., None], _random_colour(rng), _random_colour(rng)).astype(np.uint8)
    return Image.fromarray(pixels)


def _linear_gradient(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xx / width * np.cos(angle) + yy / height * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    start, end = np.array(_random_colour(rng), np.float32), np.array(_random_colour(rng), np.float32)
    return Image.fromarray((start + ramp[..., None] * (end - start)).astype(np.uint8))


def _radial_gradient(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    centre = (width * rng.uniform(0.3, 0.7), height * rng.uniform(0.3, 0.7))
    distance = np.hypot(xx - centre[0], yy - centre[1]) / (0.6 * max(width, height))
    glow = np.clip(1.0 - distance, 0, 1)[..., None] ** rng.uniform(0.5, 2.0)
    return Image.fromarray((glow * np.array(_random_colour(rng, 128), np.float32)).astype(np.uint8))


def _text_document(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), _random_colour(rng, 215))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, int(height * rng.uniform(0.03, 0.06))))
    words = ["retina", "patient", "report", "the", "of", "screening", "grade", "date", "signed", "clinic", "and"]
    line_height = int(font.size * 1.5)
    for top in range(int(height * 0.06), height - line_height, line_height):
        line = " ".join(rng.choice(words, size=int(rng.integers(3, 12))))
        draw.text((int(width * 0.06), top), line, fill=_random_colour(rng, 0, 90), font=font)
    return image


def _natural_scene(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Sky, hills, a sun, trees and texture: the statistics of an outdoor photograph, not its content."""
    horizon = int(height * rng.uniform(0.35, 0.7))
    sky_top, sky_bottom = np.array(_random_colour(rng, 60, 200)), np.array(_random_colour(rng, 120, 256))
    rows = np.linspace(0, 1, horizon)[:, None, None]
    pixels = np.zeros((height, width, 3), np.float32)
    pixels[:horizon] = sky_top + rows * (sky_bottom - sky_top)
    pixels[horizon:] = _random_colour(rng, 20, 160)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    sun = (rng.uniform(0, width), rng.uniform(0, horizon), rng.uniform(0.03, 0.08) * width)
    draw.ellipse([sun[0] - sun[2], sun[1] - sun[2], sun[0] + sun[2], sun[1] + sun[2]], fill=_random_colour(rng, 180))
    for _ in range(int(rng.integers(2, 5))):  # hills
        xs = np.sort(rng.uniform(0, width, 6))
        outline = [(0, height), *[(x, horizon - rng.uniform(0, 0.25) * height) for x in xs], (width, height)]
        draw.polygon(outline, fill=_random_colour(rng, 10, 150))
    for _ in range(int(rng.integers(3, 15))):  # trees: trunk and crown
        x, base = rng.uniform(0, width), rng.uniform(horizon, height)
        crown = rng.uniform(0.03, 0.1) * height
        draw.rectangle([x - crown / 6, base - 2 * crown, x + crown / 6, base], fill=_random_colour(rng, 30, 110))
        draw.ellipse([x - crown, base - 3 * crown, x + crown, base - crown], fill=_random_colour(rng, 0, 140))
    texture = rng.normal(0, rng.uniform(4, 14), size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + texture, 0, 255).astype(np.uint8))


def _colour_blobs(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    background = (0, 0, 0) if rng.random() < 0.5 else _random_colour(rng)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_random_colour(rng))
    return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 0.02) * width))


def _orange_disc(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 0))
    radius = min(width, height) * rng.uniform(0.35, 0.48)
    cx, cy = width / 2, height / 2
    colour = (int(rng.integers(180, 230)), int(rng.integers(70, 110)), int(rng.integers(20, 50)))
    ImageDraw.Draw(image).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    return image


def _in_round_field(draw_full_frame):
    """A full-frame picture masked to a centred disc on black: what defeats a field-of-view check on its own."""

    def draw(rng: np.random.Generator, width: int, height: int) -> Image.Image:
        picture = draw_full_frame(rng, width, height)
        mask = Image.new("L", (width, height), 0)
        radius = min(width, height) * rng.uniform(0.4, 0.5)
        cx, cy = width / 2, height / 2
        ImageDraw.Draw(mask).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        return Image.composite(picture, Image.new("RGB", (width, height), (0, 0, 0)), mask)

    return draw


# Kinds the issue lists (what a careless user sends), then harder kinds that copy a fundus frame's layout.
_NON_FUNDUS_PAINTERS = {
    "noise": _noise,
    "flat_colour": _flat,
    "checkerboard": _checkerboard,
    "linear_gradient": _linear_gradient,
    "radial_gradient": _radial_gradient,
    "text_document": _text_document,
    "natural_scene": _natural_scene,
    "colour_blobs": _colour_blobs,
    "orange_disc": _orange_disc,
    "noise_in_round_field": _in_round_field(_noise),
    "text_in_round_field": _in_round_field(_text_document),
    "scene_in_round_field": _in_round_field(_natural_scene),
}
NON_FUNDUS_KINDS: tuple[str, ...] = tuple(_NON_FUNDUS_PAINTERS)[:9]
HARD_NON_FUNDUS_KINDS: tuple[str, ...] = tuple(_NON_FUNDUS_PAINTERS)[9:]


def render_non_fundus(
    kind: str, rng: np.random.Generator | None = None, size: tuple[int, int] | None = None
) -> Image.Image:
    """One RGB picture that is *not* a fundus photograph, of one of `NON_FUNDUS_KINDS + HARD_NON_FUNDUS_KINDS`.

    `size` is `(width, height)`; by default a random size between 96 and 512 px with a photographic aspect ratio.
    """
    if kind not in _NON_FUNDUS_PAINTERS:
        raise ValueError(f"kind must be one of {tuple(_NON_FUNDUS_PAINTERS)}, got {kind!r}.")
    rng = rng if rng is not None else np.random.default_rng()
    if size is None:
        height = int(rng.integers(96, 513))
        size = (int(height * rng.choice([1.0, 4 / 3, 3 / 2])), height)
    return _NON_FUNDUS_PAINTERS[kind](rng, *size)


def non_fundus_set(
    per_kind: int, kinds: Sequence[str] = NON_FUNDUS_KINDS, seed: int = 0
) -> list[tuple[str, Image.Image]]:
    """`per_kind` pictures of each kind, `(kind, image)` pairs, reproducible for a given `seed`."""
    rng = np.random.default_rng(seed)
    return [(kind, render_non_fundus(kind, rng)) for kind in kinds for _ in range(per_kind)]


__all__ = [
    "DEFAULT_GRADE_COUNTS",
    "HARD_NON_FUNDUS_KINDS",
    "NON_FUNDUS_KINDS",
    "SOURCE",
    "non_fundus_set",
    "render_fundus",
    "render_non_fundus",
    "save_synthetic_corpus",
    "synthetic_corpus",
    "synthetic_fundus_set",
]
