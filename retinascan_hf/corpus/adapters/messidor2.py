"""Messidor-2 with the Kaggle/Google adjudicated grades: ``messidor_data.csv`` and its images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..schema import Record
from .common import Row, make_record, read_csv_rows, records_from_rows

SOURCE = "messidor2"
_COLUMNS = ("image_id", "adjudicated_dr_grade", "adjudicated_gradable")
_IMAGE_FOLDER = "IMAGES"


def read_messidor2(root: Path) -> Iterator[Record]:
    """Records of every listed image; ``adjudicated_gradable == 0`` rows are marked ungradable.

    ``image_id`` already carries the file extension. Images are looked for in ``IMAGES/`` when the
    archive has that folder (the common distribution), else beside the CSV.
    """
    images = root / _IMAGE_FOLDER if (root / _IMAGE_FOLDER).is_dir() else root

    def record(row: Row) -> Record:
        file_name = row["image_id"]
        return make_record(
            images / file_name,
            row["adjudicated_dr_grade"],
            source=SOURCE,
            name=Path(file_name).stem,
            ungradable=_is_zero(row["adjudicated_gradable"]),
        )

    yield from records_from_rows(read_csv_rows(root / "messidor_data.csv", _COLUMNS), SOURCE, record)


def _is_zero(flag: str) -> bool:
    """Whether a 0/1 flag cell says 0 (pandas may have written it as ``0.0``)."""
    try:
        return float(flag) == 0
    except ValueError:
        return False
