"""Kept records to a ``DatasetDict`` and onto disk, without ever holding decoded images.

Rows hold image *paths*, so building a split costs a few bytes per image. ``save_to_disk`` then
streams each file's bytes into the Arrow shards (about 500 MB each, in batches sized to the
data), so the saved corpus is self-contained: it no longer depends on the source folders, and
``datasets.Image()`` decodes an image only when a row is read. A ``--store paths`` corpus keeps
the absolute path as a plain string column instead (``datasets`` would embed any image path):
``cast_column("image", datasets.Image())`` decodes it, from the source file, on access.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from .preprocess import ImageStorage
from .schema import ICDR_LABELS, Record
from .split import SPLITS


def corpus_features(store: str = "bytes") -> datasets.Features:
    """Features of every split, so that corpora built from different sources concatenate.

    ``store="paths"`` makes ``image`` a string column of absolute paths (see the module docstring).
    """
    return datasets.Features(
        {
            "image": datasets.Value("string") if store == "paths" else datasets.Image(),
            "grade": datasets.ClassLabel(names=list(ICDR_LABELS)),
            "source": datasets.Value("string"),
            "image_id": datasets.Value("string"),
            "patient_id": datasets.Value("string"),
            "eye": datasets.Value("string"),
        }
    )


def to_dataset_dict(
    records: Sequence[Record], split_names: Sequence[str], storage: ImageStorage | None = None
) -> datasets.DatasetDict:
    """One split per name in :data:`SPLITS` (possibly empty), rows in ``records`` order.

    ``storage`` (default: embedded bytes) decides the image column's type and is described in each
    split's ``DatasetInfo.description``.
    """
    storage = storage or ImageStorage()
    features = corpus_features(storage.mode)
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                _columns([record for record, name in zip(records, split_names, strict=True) if name == split]),
                features=features,
                info=datasets.DatasetInfo(description=storage.describe(), features=features),
                split=datasets.NamedSplit(split),
            )
            for split in SPLITS
        }
    )


def _columns(records: Sequence[Record]) -> dict[str, list[object]]:
    return {
        "image": [str(record.path.absolute()) for record in records],
        "grade": [record.grade for record in records],
        "source": [record.source for record in records],
        "image_id": [record.image_id for record in records],
        "patient_id": [record.patient_id for record in records],
        "eye": [record.eye for record in records],
    }


def save_corpus(corpus: datasets.DatasetDict, path: Path, *, progress: bool = True) -> None:
    """``save_to_disk``, writing an empty split as one empty shard.

    By default ``datasets`` writes no shard at all for an empty split and then cannot load it.
    Writing stays in this process: it is bound by disk throughput, and ``datasets`` would run
    ``num_proc`` writers as *spawned* processes, each re-importing the whole stack.
    ``progress=False`` silences ``datasets``' own bars for this call only.
    """
    empty = {split: 1 for split, dataset in corpus.items() if dataset.num_rows == 0}
    bars_were_on = not datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        corpus.save_to_disk(str(path), num_shards=empty or None)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


class CorpusImageMissingError(FileNotFoundError):
    """A corpus row points at an image file that is gone (a ``--store paths`` corpus whose files moved)."""


def corpus_location(split: datasets.Dataset) -> str:
    """The folder a split was loaded from (for messages), or a note that it lives in memory."""
    if split.cache_files:
        return str(Path(split.cache_files[0]["filename"]).parent.parent)
    return "<in-memory dataset>"


def image_source(encoded: dict[str, Any], image_id: str, corpus: str) -> bytes | str:
    """What to decode for one undecoded ``image`` value: its embedded bytes, else its file path.

    Raises:
        CorpusImageMissingError: the row has no bytes and its file no longer exists, naming the file,
            the row and the corpus, instead of an anonymous error deep inside a training run.
    """
    if encoded.get("bytes") is not None:
        return encoded["bytes"]
    path = encoded.get("path")
    if not path or not os.path.isfile(path):
        raise CorpusImageMissingError(
            f"Image file {path!r} of row {image_id!r} in corpus {corpus} is missing: the corpus stores paths "
            "(built with --store paths) and the file was moved or deleted. Restore it, or rebuild the corpus."
        )
    return path
