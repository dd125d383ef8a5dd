"""DDR: ``DR_grading/{train,valid,test}.txt`` listings and one image folder per listing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..schema import Record
from .common import make_record, read_listing

SOURCE = "ddr"
_SUBSETS = ("train", "valid", "test")
_UNGRADABLE = "5"


def read_ddr(root: Path) -> Iterator[Record]:
    """Records of all three subsets; DDR's label 5 marks an image its graders could not grade."""
    grading = root / "DR_grading"
    for subset in _SUBSETS:
        for file_name, label in read_listing(grading / f"{subset}.txt"):
            yield make_record(
                grading / subset / file_name,
                label,
                source=SOURCE,
                name=f"{subset}/{Path(file_name).stem}",
                subset=subset,
                ungradable=label == _UNGRADABLE,
            )
