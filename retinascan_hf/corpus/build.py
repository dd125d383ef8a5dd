"""``build_corpus``: published data sets in, a split, screened ``DatasetDict`` on disk out."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from ..atomic_io import atomic_directory, check_replaceable
from .adapters import ADAPTERS
from .dataset import save_corpus, to_dataset_dict
from .preprocess import ImageStorage, preprocess_records
from .report import REPORT_FILE, BuildReport
from .schema import Record
from .screen import screen_records
from .split import Protocol, assign_splits

# Preprocessed pictures are staged here (inside the staging folder) until `save_to_disk` embeds them.
_PREPROCESSED_DIR = ".preprocessed"


def read_sources(sources: Mapping[str, Path]) -> list[Record]:
    """Records of every source, read in sorted kind order so the order of ``sources`` is irrelevant.

    Raises:
        ValueError: for a kind no adapter reads, or a label file without its layout's columns.
        FileNotFoundError: when a layout's label file is missing (a wrong path, not a bad image).
    """
    unknown = sorted(set(sources) - set(ADAPTERS))
    if unknown:
        raise ValueError(f"unknown source kind(s) {', '.join(unknown)}; known: {', '.join(ADAPTERS)}")
    return [record for kind in sorted(sources) for record in ADAPTERS[kind](Path(sources[kind]))]


def build_corpus(
    sources: Mapping[str, Path],
    out_dir: Path,
    *,
    protocol: str = "merged",
    seed: int = 0,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    num_proc: int = 1,
    progress: bool = True,
    storage: ImageStorage | None = None,
) -> BuildReport:
    """Read, screen and split ``sources`` and save the corpus to ``out_dir``; return the report.

    ``sources`` maps an adapter kind (``eyepacs``, ``aptos``, ...; see ``ADAPTERS``) to the folder
    of its published layout (the CSV file itself for ``csv``). ``out_dir`` receives
    ``DatasetDict.save_to_disk`` output (image bytes embedded) plus ``build_report.json``, written
    atomically; read it back with ``datasets.load_from_disk(out_dir)``. ``num_proc`` processes
    check and hash images (and preprocess them).
    ``storage`` chooses what rows hold (:class:`ImageStorage`: original bytes by default, paths, or
    pictures preprocessed at build time); it never changes which split an image lands in.
    The same sources, protocol, seed and ratios always give the same splits.
    """
    storage = storage or ImageStorage()
    _check_output_is_apart(Path(out_dir), sources)
    plan = Protocol.parse(protocol)
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError(f"need 0 <= val_ratio, test_ratio and a sum below 1; got {val_ratio}, {test_ratio}")
    found = read_sources(sources)
    kept, excluded = screen_records(found, num_proc=num_proc, progress=progress)
    split_names = assign_splits(kept, plan, seed=seed, val_ratio=val_ratio, test_ratio=test_ratio)
    storage_facts = storage.to_dict()
    with atomic_directory(Path(out_dir), marker=REPORT_FILE) as staging:
        if storage.preprocessing is not None:
            prepared = preprocess_records(
                kept,
                split_names,
                storage.preprocessing,
                staging / _PREPROCESSED_DIR,
                num_proc=num_proc,
                progress=progress,
            )
            kept, split_names = prepared.records, prepared.split_names
            excluded = [*excluded, *prepared.excluded]
            storage_facts.update(source_bytes=prepared.source_bytes, stored_bytes=prepared.stored_bytes)
        report = BuildReport.summarise(
            found=found,
            kept=kept,
            split_names=split_names,
            excluded=excluded,
            protocol=str(plan),
            seed=seed,
            val_ratio=val_ratio,
            test_ratio=test_ratio,
            storage=storage_facts,
        )
        save_corpus(to_dataset_dict(kept, split_names, storage), staging, progress=progress)
        shutil.rmtree(staging / _PREPROCESSED_DIR, ignore_errors=True)
        report.save(staging / REPORT_FILE)
    return report


def _check_output_is_apart(out_dir: Path, sources: Mapping[str, Path]) -> None:
    """Fail before any work if writing ``out_dir`` could destroy a source or a folder we did not make."""
    target = out_dir.resolve()
    for kind, source in sources.items():
        source_path = Path(source).resolve()
        if source_path == target or source_path.is_relative_to(target):
            raise ValueError(f"--out {out_dir} contains the {kind} source {source}: replacing it would delete it.")
    check_replaceable(target, REPORT_FILE)
