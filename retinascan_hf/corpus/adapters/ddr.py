"""DDR: ``DR_grading/{train,valid,test}.txt`` listings and one image folder per listing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..schema import Record
from .common import Row, make_record, read_listing, records_from_rows

SOURCE = "ddr"
_SUBSETS = ("train", "valid", "test")
_UNGRADABLE = "5"


def read_ddr(root: Path) -> Iterator[Record]:
    """Records of all three subsets; DDR's label 5 marks an image its graders could not grade."""
    grading = root / "DR_grading"
    for subset in _SUBSETS:

        def record(row: Row, subset: str = subset) -> Record:
            return make_record(
                grading / subset / row["file"],
                row["label"],
                source=SOURCE,
                name=f"{subset}/{Path(row['file']).stem}",
                subset=subset,
                ungradable=row["label"] == _UNGRADABLE,
            )

        yield from records_from_rows(read_listing(grading / f"{subset}.txt"), SOURCE, record)
