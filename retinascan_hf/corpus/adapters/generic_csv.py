"""Any other data set, described by a CSV with ``image_path,grade[,source,patient_id]``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePath

from ..schema import Record
from .common import Row, make_record, read_csv_rows, records_from_rows

SOURCE = "csv"


def read_generic_csv(csv_path: Path) -> Iterator[Record]:
    """Records of the CSV at ``csv_path``; relative image paths are relative to its folder.

    The image id is the path without its extension, so images in different sub-folders that share
    a file name stay distinct. A missing ``source`` cell falls back to ``"csv"``, a missing
    ``patient_id`` to the image id. Patient ids are namespaced by the CSV, not by the row's source: a
    patient photographed by two cameras (two sources) is still one patient, kept on one side of a split.
    """

    def record(row: Row) -> Record:
        image_path = PurePath(row["image_path"])
        name = image_path.relative_to(image_path.anchor).with_suffix("").as_posix()  # ValueError when empty
        return make_record(
            csv_path.parent / image_path,
            row["grade"],
            source=row.get("source") or SOURCE,
            name=name,
            patient=row.get("patient_id") or None,
            patient_namespace=SOURCE,
        )

    yield from records_from_rows(read_csv_rows(csv_path, ("image_path", "grade")), SOURCE, record)
