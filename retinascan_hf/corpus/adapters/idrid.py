"""IDRiD task B (Disease Grading): one labels CSV and one image folder per official subset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..schema import Record
from .common import make_record, read_csv_rows

SOURCE = "idrid"
_COLUMNS = ("Image name", "Retinopathy grade")
_TASK = "B. Disease Grading"
_SUBSETS = (
    ("train", "a. Training Set", "a. IDRiD_Training Labels.csv"),
    ("test", "b. Testing Set", "b. IDRiD_Testing Labels.csv"),
)


def read_idrid(root: Path) -> Iterator[Record]:
    """Records of both subsets; ids carry the subset because both reuse ``IDRiD_001``..."""
    task = root / _TASK
    for subset, image_folder, labels_file in _SUBSETS:
        for row in read_csv_rows(task / "2. Groundtruths" / labels_file, _COLUMNS):
            name = row["Image name"]
            yield make_record(
                task / "1. Original Images" / image_folder / f"{name}.jpg",
                row["Retinopathy grade"],
                source=SOURCE,
                name=f"{subset}/{name}",
                subset=subset,
            )
