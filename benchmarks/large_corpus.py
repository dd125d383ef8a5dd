"""A large corpus of distinct fundus photographs, generated from the shared real ones, for scale benchmarks.

The shared data holds 2,719 real photographs; builds of 100,000 images need more. Each generated image is
a real photograph with its own random changes (a crop of 88-100% of the frame, a rotation of up to 15
degrees, brightness and contrast within 12%, Gaussian noise, a JPEG quality of 85-95), so every file has
different bytes (the build's duplicate check counts none) while looking like what the build expects. It is
written in the Kaggle EyePACS layout (`trainLabels.csv` + `train/<patient>_<eye>.jpeg`), outside the
repository: the images are third-party data and must never be committed.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from retinascan_hf.atomic_io import write_json_atomically

CAMERA_DRAFT = 4  # camera originals are decoded at 1/4 size (about 1,000 px wide): camera-like, quick to write


@dataclass(frozen=True)
class SourceImage:
    path: str
    grade: int
    camera: bool


def real_sources(data_dir: Path) -> list[SourceImage]:
    """Every labelled photograph of the shared `eyepacs-256` and `eyepacs-originals` folders."""
    sources = []
    for folder, camera in (("eyepacs-256", False), ("eyepacs-originals", True)):
        labels = data_dir / folder / "trainLabels.csv"
        if not labels.is_file():
            continue
        with open(labels, newline="") as handle:
            for row in csv.DictReader(handle):
                sources.append(
                    SourceImage(str(data_dir / folder / "train" / f"{row['image']}.jpeg"), int(row["level"]), camera)
                )
    if not sources:
        raise FileNotFoundError(
            f"No eyepacs-256/trainLabels.csv or eyepacs-originals/trainLabels.csv under {data_dir}."
        )
    return sources


def variant(source: SourceImage, index: int) -> tuple[Image.Image, int]:
    """The `index`-th generated picture: `source` with changes drawn from a generator seeded by `index`."""
    rng = np.random.default_rng([20_260_101, index])
    with Image.open(source.path) as opened:
        if source.camera:
            opened.draft("RGB", (opened.width // CAMERA_DRAFT, opened.height // CAMERA_DRAFT))
        picture = opened.convert("RGB")
    side = rng.uniform(0.88, 1.0)
    width, height = int(picture.width * side), int(picture.height * side)
    left, top = rng.integers(0, picture.width - width + 1), rng.integers(0, picture.height - height + 1)
    picture = picture.crop((left, top, left + width, top + height))
    picture = picture.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    pixels = np.asarray(picture, dtype=np.float32)
    pixels = (pixels - 128) * rng.uniform(0.88, 1.12) + 128 * rng.uniform(0.88, 1.12)
    pixels += rng.normal(0, rng.uniform(1.5, 4.0), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), int(rng.integers(85, 96))


def _write_one(sources: Sequence[SourceImage], folder: str, index: int) -> int:
    """Write image `index` (skipped if a previous run wrote it); returns its size in bytes."""
    target = Path(folder) / f"{image_name(index)}.jpeg"
    if target.exists():
        return target.stat().st_size
    picture, quality = variant(sources[index % len(sources)], index)
    temporary = target.with_name(f".{target.name}.tmp")
    picture.save(temporary, "JPEG", quality=quality)
    os.replace(temporary, target)
    return target.stat().st_size


def image_name(index: int) -> str:
    """Two eyes per generated patient, as in EyePACS."""
    return f"{index // 2}_{('left', 'right')[index % 2]}"


def generate(data_dir: Path, out: Path, count: int, *, num_proc: int = 2, progress: bool = True) -> dict:
    """Write `count` images and `trainLabels.csv` under `out`; resumes where a killed run stopped."""
    sources = real_sources(data_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    work = partial(_write_one, sources, str(out / "train"))
    with multiprocessing.get_context().Pool(num_proc) as pool:
        sizes = list(tqdm(pool.imap(work, range(count), chunksize=64), total=count, unit="img", disable=not progress))
    labels = out / "trainLabels.csv"
    temporary = labels.with_name(".trainLabels.csv.tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "level"])
        writer.writerows([image_name(index), sources[index % len(sources)].grade] for index in range(count))
    os.replace(temporary, labels)
    summary = {"images": count, "bytes": sum(sizes), "real_sources": len(sources)}
    write_json_atomically(out / "generated.json", summary)
    return summary


def subset_layout(corpus: Path, out: Path, count: int) -> Path:
    """An EyePACS layout listing the first `count` generated images (the image folder is linked, not copied)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(corpus / "trainLabels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) - 1 < count:
        raise ValueError(f"{corpus} holds {len(rows) - 1} images, fewer than {count}.")
    with open(out / "trainLabels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows[: count + 1])
    link = out / "train"
    if not link.exists():
        link.symlink_to((corpus / "train").resolve(), target_is_directory=True)
    return out


__all__ = ["generate", "image_name", "real_sources", "subset_layout", "variant"]
