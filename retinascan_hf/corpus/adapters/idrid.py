"""IDRiD task B (Disease Grading): one labels CSV and one image folder per official subset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..schema import Record
from .common import Row, make_record, read_csv_rows, records_from_rows

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

        def record(row: Row, subset: str = subset, image_folder: str = image_folder) -> Record:
            name = row["Image name"]
            return make_record(
                task / "1. Original Images" / image_folder / f"{name}.jpg",
                row["Retinopathy grade"],
                source=SOURCE,
                name=f"{subset}/{name}",
                subset=subset,
            )

        yield from records_from_rows(read_csv_rows(task / "2. Groundtruths" / labels_file, _COLUMNS), SOURCE, record)
