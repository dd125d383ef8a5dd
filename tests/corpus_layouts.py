"""Writers for miniature copies of the published DR data-set layouts, shared by the corpus tests.

Each writer lays files out exactly as the data set is distributed (file names, headers, folder
names) with small synthetic images, so the adapters are tested against the real layouts. An
image's ``state`` makes it broken on purpose: ``"truncated"`` (last third cut off), ``"garbage"``
(bytes that are no image), ``"missing"`` (listed, never written).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

OK, TRUNCATED, GARBAGE, MISSING = "ok", "truncated", "garbage", "missing"
_FORMATS = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


def fundus_bytes(seed: int, suffix: str, size: int = 32) -> bytes:
    """A small synthetic fundus (bright disc on black, seeded noise) encoded for ``suffix``.

    The noise makes every seed's bytes unique, so only deliberate copies count as duplicates.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    disc = (x - size / 2) ** 2 + (y - size / 2) ** 2 < (0.45 * size) ** 2
    pixels = rng.integers(0, 256, (size, size, 3)) * disc[..., None]
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, _FORMATS[suffix.lower()])
    return buffer.getvalue()


def place_image(path: Path, state: str = OK) -> None:
    """Write the image at ``path`` (format from its suffix, content seeded by the path) in ``state``."""
    if state == MISSING:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = fundus_bytes(zlib.crc32(str(path).encode()), path.suffix)
    if state == TRUNCATED:
        data = data[: 2 * len(data) // 3]
    elif state == GARBAGE:
        data = b"<html>not an image</html>"
    path.write_bytes(data)


def write_text(path: Path, lines: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def eyepacs_layout(root: Path, rows: Sequence[tuple[str, object, str]]) -> Path:
    """``trainLabels.csv`` (``image,level``) + ``train/<image>.jpeg``; rows ``(image, level, state)``."""
    write_text(root / "trainLabels.csv", ["image,level", *(f"{image},{level}" for image, level, _ in rows)])
    for image, _, state in rows:
        place_image(root / "train" / f"{image}.jpeg", state)
    return root


def aptos_layout(root: Path, rows: Sequence[tuple[str, object, str]]) -> Path:
    """``train.csv`` (``id_code,diagnosis``) + ``train_images/<id_code>.png``."""
    write_text(root / "train.csv", ["id_code,diagnosis", *(f"{code},{grade}" for code, grade, _ in rows)])
    for code, _, state in rows:
        place_image(root / "train_images" / f"{code}.png", state)
    return root


def idrid_layout(root: Path, subsets: Mapping[str, Sequence[tuple[str, object, str]]]) -> Path:
    """Task B folders; ``subsets`` maps ``"train"``/``"test"`` to ``(image name, grade, state)``.

    The header keeps IDRiD's trailing space, and rows carry the surplus empty cells (more than
    the header names) and the trailing empty row of the published spreadsheets.
    """
    task = root / "B. Disease Grading"
    folders = {
        "train": ("a. Training Set", "a. IDRiD_Training Labels.csv"),
        "test": ("b. Testing Set", "b. IDRiD_Testing Labels.csv"),
    }
    for subset, rows in subsets.items():
        image_folder, labels_file = folders[subset]
        write_text(
            task / "2. Groundtruths" / labels_file,
            [
                "Image name,Retinopathy grade,Risk of macular edema ,,",
                *(f"{name},{grade},0,,,," for name, grade, _ in rows),
                ",,,,",
            ],
        )
        for name, _, state in rows:
            place_image(task / "1. Original Images" / image_folder / f"{name}.jpg", state)
    return root


def ddr_layout(root: Path, subsets: Mapping[str, Sequence[tuple[str, object, str]]]) -> Path:
    """``DR_grading/<subset>.txt`` (``<file> <label>``) + ``DR_grading/<subset>/<file>``."""
    grading = root / "DR_grading"
    for subset in ("train", "valid", "test"):
        rows = subsets.get(subset, ())
        write_text(grading / f"{subset}.txt", [f"{file} {label}" for file, label, _ in rows])
        for file, _, state in rows:
            place_image(grading / subset / file, state)
    return root


DEEPDRID_HEADER = (
    "patient_id,image_id,image_path,Overall quality,left_eye_DR_Level,right_eye_DR_Level,"
    "patient_DR_Level,Clarity,Field definition,Artifact"
)


def deepdrid_layout(root: Path, subsets: Mapping[str, Sequence[tuple[int, str, object, str]]]) -> Path:
    """Regular fundus CSVs with Windows ``image_path`` + ``<subset>/Images/<patient>/<image>.jpg``.

    ``subsets`` maps ``"training"``/``"validation"`` to ``(patient, image_id, grade, state)``; the
    grade goes in the eye column matching the image id's ``_l``/``_r`` suffix.
    """
    base = root / "regular_fundus_images"
    for subset in ("training", "validation"):
        folder = f"regular-fundus-{subset}"
        lines = [DEEPDRID_HEADER]
        for patient, image_id, grade, state in subsets.get(subset, ()):
            left, right = (grade, "") if "_l" in image_id else ("", grade)
            lines.append(f"{patient},{image_id},\\{folder}\\{patient}\\{image_id}.jpg,1,{left},{right},{grade},1,1,1")
            place_image(base / folder / "Images" / str(patient) / f"{image_id}.jpg", state)
        write_text(base / folder / f"{folder}.csv", lines)
    return root


def messidor2_layout(root: Path, rows: Sequence[tuple[str, object, int, str]]) -> Path:
    """``messidor_data.csv`` + ``IMAGES/<image_id>``; rows ``(image_id with extension, grade, gradable, state)``."""
    write_text(
        root / "messidor_data.csv",
        [
            "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable",
            *(f"{image},{grade},{'' if grade == '' else 0},{gradable}" for image, grade, gradable, _ in rows),
        ],
    )
    for image, _, _, state in rows:
        place_image(root / "IMAGES" / image, state)
    return root


GDRBENCH_FOLDERS = ("nodr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")


def gdrbench_layout(root: Path, rows: Sequence[tuple[str, int, str, str]], *, with_splits: bool) -> Path:
    """``images/<DOMAIN>/<grade folder>/<file>`` and, optionally, ``splits/<DOMAIN>_<subset>.txt``.

    Rows are ``(DOMAIN, grade, file, subset)`` with subset ``"train"`` or ``"crossval"``.
    """
    listings: dict[str, list[str]] = {}
    for domain, grade, file, subset in rows:
        relative = f"{domain}/{GDRBENCH_FOLDERS[grade]}/{file}"
        place_image(root / "images" / relative)
        listings.setdefault(f"{domain}_{subset}.txt", []).append(f"{relative} {grade}")
    if with_splits:
        for name, lines in listings.items():
            write_text(root / "splits" / name, lines)
    return root


def generic_csv_layout(csv_path: Path, header: str, rows: Sequence[tuple[str, str, str]]) -> Path:
    """A CSV with ``header`` and ``(image_path, other cells, state)`` rows; images relative to it."""
    write_text(csv_path, [header, *(f"{image},{cells}" for image, cells, _ in rows)])
    for image, _, state in rows:
        place_image(csv_path.parent / image, state)
    return csv_path
