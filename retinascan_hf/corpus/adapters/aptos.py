"""APTOS 2019: ``train.csv`` (``id_code,diagnosis``) and ``train_images/<id_code>.png``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..schema import Record
from .common import Row, make_record, read_csv_rows, records_from_rows

SOURCE = "aptos"


def read_aptos(root: Path) -> Iterator[Record]:
    """Records of the labelled APTOS training set; APTOS records neither patient nor eye."""

    def record(row: Row) -> Record:
        name = row["id_code"]
        return make_record(root / "train_images" / f"{name}.png", row["diagnosis"], source=SOURCE, name=name)

    yield from records_from_rows(read_csv_rows(root / "train.csv", ("id_code", "diagnosis")), SOURCE, record)
