"""How a build stores its images: original bytes, paths only, or preprocessed once at build time.

Camera originals are 3-16 MP JPEGs (EyePACS alone is ~35 GB), yet the model sees a 224 px fundus
crop. Embedding the originals copies them into the corpus, and every training and evaluation run
then decodes the full-size files again. With ``--image-size`` the build runs the processor's own
fundus crop (``RetinaScanImageProcessor.to_model_image``: decode, crop to the disc, pad to a
square, resize) once per image and stores that square picture, re-encoded as JPEG or PNG, which
is what training later decodes. With ``--store paths`` nothing is copied: rows hold the absolute
paths of the source files, which must then stay where they are.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from tqdm.auto import tqdm

if TYPE_CHECKING:  # at run time imported where used: `retinascan data --help` reads the constants below only
    from ..image_processing_retinascan import RetinaScanImageProcessor
    from .schema import Exclusion, Record
    from .screen import Excluded

STORE_MODES: tuple[str, ...] = ("bytes", "paths")
IMAGE_FORMATS: dict[str, str] = {"jpeg": ".jpg", "png": ".png"}
DEFAULT_JPEG_QUALITY = 95
_MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE = 32, 4096


@dataclass(frozen=True)
class Preprocessing:
    """Build-time preprocessing: the fundus crop at ``image_size`` px, encoded as ``image_format``.

    Attributes:
        image_size: side of the stored square picture, in pixels (at least the model's input size;
            512 keeps room for a 448 px backbone and for augmentation).
        image_format: ``"jpeg"`` (default; small) or ``"png"`` (lossless, about 5x larger).
        quality: JPEG quality 1-100 (95 by default: no visible loss at about a tenth of a PNG).
    """

    image_size: int
    image_format: str = "jpeg"
    quality: int = DEFAULT_JPEG_QUALITY

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ValueError(f"image size must be an integer, got {self.image_size!r}")
        if not _MIN_IMAGE_SIZE <= self.image_size <= _MAX_IMAGE_SIZE:
            raise ValueError(f"image size must lie in [{_MIN_IMAGE_SIZE}, {_MAX_IMAGE_SIZE}] px, got {self.image_size}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be an integer in [1, 100], got {self.quality!r}")

    def processor(self) -> RetinaScanImageProcessor:
        """The processor whose crop is stored: default fundus settings, output ``image_size``."""
        from ..image_processing_retinascan import RetinaScanImageProcessor

        return RetinaScanImageProcessor(size=self.image_size)

    def encode(self, image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        if self.image_format == "jpeg":
            image.save(buffer, "JPEG", quality=self.quality)
        else:
            image.save(buffer, "PNG")
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """What the build report and the corpus metadata record about the stored pictures."""
        processor = self.processor()
        return {
            "image_size": self.image_size,
            "format": self.image_format,
            "quality": self.quality if self.image_format == "jpeg" else None,
            "crop": "fundus" if processor.do_crop_fundus else "none",
            "fundus_threshold": processor.fundus_threshold,
            "resample": Image.Resampling(processor.resample).name.lower(),
        }


@dataclass(frozen=True)
class ImageStorage:
    """What the saved corpus holds per row: ``"bytes"`` (self-contained) or ``"paths"`` (no copy).

    ``preprocessing`` (bytes mode only) replaces each original by its preprocessed picture.
    """

    mode: str = "bytes"
    preprocessing: Preprocessing | None = None

    def __post_init__(self) -> None:
        if self.mode not in STORE_MODES:
            raise ValueError(f"store mode must be one of {', '.join(STORE_MODES)}, got {self.mode!r}")
        if self.mode == "paths" and self.preprocessing is not None:
            raise ValueError(
                "--store paths keeps your original files in place, while --image-size stores preprocessed "
                "copies: use one or the other."
            )

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.mode, "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None}

    def describe(self) -> str:
        """One sentence for the dataset info and card."""
        if self.mode == "paths":
            return "Rows hold absolute paths of the source image files (not copied); they must stay in place."
        if self.preprocessing is None:
            return "Rows embed the source image files' original bytes."
        settings = self.preprocessing
        encoding = f"JPEG quality {settings.quality}" if settings.image_format == "jpeg" else "PNG"
        return (
            f"Images preprocessed at build time: cropped to the fundus, padded to a square, resized to "
            f"{settings.image_size} px, stored as {encoding}."
        )


@dataclass(frozen=True)
class _Outcome:
    issue: Exclusion | None
    source_bytes: int = 0
    stored_bytes: int = 0


def _target_name(index: int, image_id: str, extension: str) -> str:
    """A collision-free file name that still says which image it is (the basename is kept in the corpus)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id)[-80:]
    return f"{index:08d}_{readable}{extension}"


def _preprocess_one(settings: Preprocessing, task: tuple[str, str]) -> _Outcome:
    """Crop, resize, encode and write one image; never raises for a bad image, so one file cannot stop a build."""
    from ..image_processing_retinascan import NoFundusFoundError, RetinaScanInputError
    from .schema import Exclusion

    source, target = task
    try:
        source_bytes = os.path.getsize(source)
        picture = _processor_for(settings).to_model_image(source)
    except FileNotFoundError:  # deleted since screening
        return _Outcome(Exclusion.MISSING_FILE)
    except NoFundusFoundError:
        return _Outcome(Exclusion.NO_FUNDUS)
    except (RetinaScanInputError, OSError):  # screening passed it, but the crop cannot be made
        return _Outcome(Exclusion.UNREADABLE_FILE)
    data = settings.encode(picture)
    Path(target).write_bytes(data)
    return _Outcome(None, source_bytes, len(data))


_PROCESSORS: dict[Preprocessing, RetinaScanImageProcessor] = {}


def _processor_for(settings: Preprocessing) -> RetinaScanImageProcessor:
    """One processor per worker process and settings (building one per image would dominate small images)."""
    if settings not in _PROCESSORS:
        _PROCESSORS[settings] = settings.processor()
    return _PROCESSORS[settings]


@dataclass
class PreprocessResult:
    """Records now pointing at their preprocessed files, the rows dropped, and bytes in and out."""

    records: list[Record]
    split_names: list[str]
    excluded: list[Excluded]
    source_bytes: int
    stored_bytes: int


def preprocess_records(
    records: Sequence[Record],
    split_names: Sequence[str],
    settings: Preprocessing,
    directory: Path,
    *,
    num_proc: int = 1,
    progress: bool = True,
) -> PreprocessResult:
    """Write the preprocessed picture of every record into ``directory``, over ``num_proc`` processes.

    Workers write the encoded files themselves and return only their size, so this process never
    holds image data and its memory does not grow with the corpus. A record whose fundus cannot be
    found (a blank or non-fundus frame) is excluded with reason ``no_fundus``; the others keep their
    order and split.
    """
    from .screen import Excluded

    directory.mkdir(parents=True, exist_ok=True)
    extension = IMAGE_FORMATS[settings.image_format]
    targets = [directory / _target_name(index, record.image_id, extension) for index, record in enumerate(records)]
    tasks = [(str(record.path), str(target)) for record, target in zip(records, targets, strict=True)]
    work = partial(_preprocess_one, settings)
    bar = partial(tqdm, total=len(tasks), desc="Preprocessing images", unit="img", disable=not progress)
    if num_proc <= 1:
        outcomes = list(bar(map(work, tasks)))
    else:
        chunksize = max(1, min(16, len(tasks) // (num_proc * 8)))
        with multiprocessing.get_context().Pool(num_proc) as pool:
            outcomes = list(bar(pool.imap(work, tasks, chunksize=chunksize)))
    result = PreprocessResult([], [], [], 0, 0)
    for record, split, target, outcome in zip(records, split_names, targets, outcomes, strict=True):
        if outcome.issue is not None:
            result.excluded.append(
                Excluded(record.image_id, record.source, str(record.path), outcome.issue, line=record.line)
            )
            continue
        result.records.append(replace(record, path=target))
        result.split_names.append(split)
        result.source_bytes += outcome.source_bytes
        result.stored_bytes += outcome.stored_bytes
    return result


__all__ = ["IMAGE_FORMATS", "STORE_MODES", "ImageStorage", "PreprocessResult", "Preprocessing", "preprocess_records"]
