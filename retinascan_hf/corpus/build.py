"""``build_corpus``: published data sets in, a split, screened ``DatasetDict`` on disk out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers.utils import logging

from ..atomic_io import atomic_directory, check_replaceable, recover_directory
from .adapters import ADAPTERS
from .dataset import save_corpus, to_dataset_dict
from .report import REPORT_FILE, BuildReport
from .schema import Record
from .screen import Excluded, screen_records
from .split import Protocol, assign_splits, split_warnings

logger = logging.get_logger(__name__)


class EmptySourceError(ValueError):
    """A source that contributes nothing: no row listed, or none that survived screening."""


def read_sources_by_kind(sources: Mapping[str, Path]) -> dict[str, list[Record]]:
    """Records of every source kind, in sorted kind order so the order of ``sources`` is irrelevant.

    Raises:
        ValueError: for a kind no adapter reads, or a label file that cannot be read (wrong or repeated
            columns, not UTF-8, not a regular file, too large).
        EmptySourceError: for a source that lists no row at all (a header-only label file).
        FileNotFoundError: when a layout's label file is missing (a wrong path, not a bad image).
    """
    unknown = sorted(set(sources) - set(ADAPTERS))
    if unknown:
        raise ValueError(f"unknown source kind(s) {', '.join(unknown)}; known: {', '.join(ADAPTERS)}")
    by_kind = {kind: list(ADAPTERS[kind](Path(sources[kind]))) for kind in sorted(sources)}
    for kind, records in by_kind.items():
        if not records:
            raise EmptySourceError(f"The {kind} source {sources[kind]} lists no rows: is its label file empty?")
    return by_kind


def read_sources(sources: Mapping[str, Path]) -> list[Record]:
    """Records of every source, read in sorted kind order (see [`read_sources_by_kind`])."""
    return [record for records in read_sources_by_kind(sources).values() for record in records]


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
) -> BuildReport:
    """Read, screen and split ``sources`` and save the corpus to ``out_dir``; return the report.

    ``sources`` maps an adapter kind (``eyepacs``, ``aptos``, ...; see ``ADAPTERS``) to the folder
    of its published layout (the CSV file itself for ``csv``). ``out_dir`` receives
    ``DatasetDict.save_to_disk`` output (image bytes embedded) plus ``build_report.json``, written
    atomically; read it back with ``datasets.load_from_disk(out_dir)``. ``num_proc`` processes
    check and hash images.
    The same sources, protocol, seed and ratios always give the same splits.
    """
    _check_output_is_apart(Path(out_dir), sources)
    plan = Protocol.parse(protocol)
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError(f"need 0 <= val_ratio, test_ratio and a sum below 1; got {val_ratio}, {test_ratio}")
    by_kind = read_sources_by_kind(sources)
    found = [record for records in by_kind.values() for record in records]
    kept, excluded = screen_records(found, num_proc=num_proc, progress=progress)
    _check_every_source_kept_something(by_kind, sources, kept, excluded)
    split_names = assign_splits(kept, plan, seed=seed, val_ratio=val_ratio, test_ratio=test_ratio)
    warnings = split_warnings(kept, split_names, plan, plan.wanted_splits(val_ratio, test_ratio))
    for warning in warnings:
        logger.warning(warning)
    report = BuildReport.summarise(
        found=found,
        kept=kept,
        split_names=split_names,
        excluded=excluded,
        protocol=str(plan),
        seed=seed,
        val_ratio=val_ratio,
        test_ratio=test_ratio,
        warnings=warnings,
    )
    with atomic_directory(Path(out_dir), marker=REPORT_FILE) as staging:
        save_corpus(to_dataset_dict(kept, split_names), staging, progress=progress)
        report.save(staging / REPORT_FILE)
    return report


def _check_every_source_kept_something(
    by_kind: Mapping[str, Sequence[Record]],
    sources: Mapping[str, Path],
    kept: Sequence[Record],
    excluded: Sequence[Excluded],
) -> None:
    """An empty corpus, or a source that lost every row, is an error naming the reasons, never an exit 0."""
    kept_ids = {record.image_id for record in kept}
    for kind, records in by_kind.items():
        if any(record.image_id in kept_ids for record in records):
            continue
        ids = {record.image_id for record in records}
        mine = [row for row in excluded if row.image_id in ids]
        reasons = ", ".join(f"{reason} {count}" for reason, count in Counter(row.reason.value for row in mine).items())
        examples = "; ".join(
            f"{row.path}{f':{row.line}' if row.line else ''} ({row.detail or row.reason.value})" for row in mine[:3]
        )
        raise EmptySourceError(
            f"No image of the {kind} source {sources[kind]} survived screening: {len(records)} row(s) listed, "
            f"excluded as {reasons}. For example: {examples}."
        )


def _check_output_is_apart(out_dir: Path, sources: Mapping[str, Path]) -> None:
    """Fail before any work if writing ``out_dir`` could destroy a source or a folder we did not make."""
    recover_directory(out_dir)  # a build killed while replacing it: put the old corpus back first
    target = out_dir.resolve()
    for kind, source in sources.items():
        source_path = Path(source).resolve()
        if source_path == target or source_path.is_relative_to(target):
            raise ValueError(f"--out {out_dir} contains the {kind} source {source}: replacing it would delete it.")
    check_replaceable(target, REPORT_FILE)
