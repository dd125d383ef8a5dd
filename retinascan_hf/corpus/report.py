"""The build report: what each source listed, what was kept, why the rest was excluded.

It also counts the images of each grade in every split. It is saved beside the corpus as JSON
and rendered as the tables the CLI prints and the dataset card shows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .schema import ICDR_LABELS, Exclusion, Record
from .screen import Excluded
from .split import SPLITS

REPORT_FILE = "build_report.json"

Table = tuple[list[str], list[list[Any]]]


@dataclass
class SourceCounts:
    """Rows a source listed (``found``), kept, and excluded per :class:`Exclusion` value."""

    found: int = 0
    kept: int = 0
    excluded: dict[str, int] = field(default_factory=dict)


@dataclass
class BuildReport:
    """Everything needed to audit or reproduce a build.

    Attributes:
        protocol, seed, val_ratio, test_ratio: the split settings used.
        sources: per-source :class:`SourceCounts`.
        splits: ``splits[split][source]`` is the number of images per grade 0-4.
        excluded: every excluded row, with its reason (and kept twin for duplicates, line and detail for
            malformed rows).
        warnings: what the build could do but the user should know (a split too small, a source in too
            few splits).
    """

    protocol: str
    seed: int
    val_ratio: float
    test_ratio: float
    sources: dict[str, SourceCounts]
    splits: dict[str, dict[str, list[int]]]
    excluded: list[Excluded]
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def summarise(
        cls,
        *,
        found: Sequence[Record],
        kept: Sequence[Record],
        split_names: Sequence[str],
        excluded: Sequence[Excluded],
        protocol: str,
        seed: int,
        val_ratio: float,
        test_ratio: float,
        warnings: Sequence[str] = (),
    ) -> BuildReport:
        """Count a finished screening and split; ``split_names`` is aligned with ``kept``."""
        sources = {source: SourceCounts() for source in sorted({record.source for record in found})}
        for record in found:
            sources[record.source].found += 1
        for record in kept:
            sources[record.source].kept += 1
        for (source, reason), count in sorted(Counter((row.source, row.reason.value) for row in excluded).items()):
            sources[source].excluded[reason] = count
        splits = {split: {source: [0] * len(ICDR_LABELS) for source in sources} for split in SPLITS}
        for record, split in zip(kept, split_names, strict=True):
            splits[split][record.source][record.grade or 0] += 1
        return cls(protocol, seed, val_ratio, test_ratio, sources, splits, list(excluded), list(warnings))

    @property
    def num_kept(self) -> int:
        return sum(counts.kept for counts in self.sources.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["excluded"] = [{**asdict(row), "reason": row.reason.value} for row in self.excluded]
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def source_table(self) -> Table:
        """Rows ``source, found, kept, <count per exclusion reason that occurred>``."""
        reasons = [
            reason.value for reason in Exclusion if any(reason.value in c.excluded for c in self.sources.values())
        ]
        rows = [
            [source, counts.found, counts.kept, *(counts.excluded.get(reason, 0) for reason in reasons)]
            for source, counts in self.sources.items()
        ]
        return ["source", "found", "kept", *reasons], rows

    def split_table(self) -> Table:
        """Rows ``source, split, <images per grade>, total``, then ``all`` rows per split."""
        rows: list[list[Any]] = []
        for source in self.sources:
            rows.extend([source, split, *self.splits[split][source]] for split in SPLITS)
        for split in SPLITS:
            per_source = self.splits[split].values()
            rows.append(
                ["all", split, *(sum(counts[grade] for counts in per_source) for grade in range(len(ICDR_LABELS)))]
            )
        return ["source", "split", *ICDR_LABELS, "total"], [[*row, sum(row[2:])] for row in rows]


def format_table(table: Table) -> str:
    """Plain-text rendering for the terminal: text columns left-aligned, counts right-aligned."""
    header, rows = table
    textual = [all(isinstance(row[column], str) for row in rows) for column in range(len(header))]
    cells = [header, *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if left else cell.rjust(width)
            for cell, width, left in zip(row, widths, textual, strict=True)
        )
        for row in cells
    )
