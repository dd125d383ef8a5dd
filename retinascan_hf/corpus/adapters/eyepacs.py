"""EyePACS / Kaggle DR 2015: ``trainLabels.csv`` (``image,level``) and ``train/<image>.jpeg``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..schema import Record
from .common import Row, make_record, read_csv_rows, records_from_rows

SOURCE = "eyepacs"
_PATIENT_EYE = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")


def split_patient_eye(name: str) -> tuple[str | None, str | None]:
    """``("10009", "left")`` from ``"10009_left"``; ``(None, None)`` for other names.

    Both eyes of a patient are in the set, so the patient is what a split must keep together.
    """
    match = _PATIENT_EYE.match(name)
    return (match["patient"], match["eye"]) if match else (None, None)


def read_eyepacs(root: Path) -> Iterator[Record]:
    """Records of the Kaggle training set found under ``root``."""

    def record(row: Row) -> Record:
        name = row["image"]
        patient, eye = split_patient_eye(name)
        return make_record(
            root / "train" / f"{name}.jpeg", row["level"], source=SOURCE, name=name, patient=patient, eye=eye
        )

    yield from records_from_rows(read_csv_rows(root / "trainLabels.csv", ("image", "level")), SOURCE, record)
