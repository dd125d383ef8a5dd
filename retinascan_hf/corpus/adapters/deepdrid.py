"""DeepDRiD regular fundus images: one CSV per official subset, images under ``Images/<patient>/``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

from ..schema import Record
from .common import Row, make_record, read_csv_rows, records_from_rows

SOURCE = "deepdrid"
_COLUMNS = ("patient_id", "image_id", "image_path", "left_eye_DR_Level", "right_eye_DR_Level")
_SUBSETS = (("train", "regular-fundus-training"), ("validation", "regular-fundus-validation"))
_EYE_SUFFIX = re.compile(r"_(?P<side>[lr])\d*$")
_EYES = {"l": "left", "r": "right"}


def image_file(subset_dir: Path, windows_path: str) -> Path:
    r"""Where ``\regular-fundus-training\1\1_l1.jpg`` lies on disk: ``<subset>/Images/1/1_l1.jpg``.

    The CSV path starts at the subset folder but leaves out the ``Images`` level the archive has.
    """
    path = PureWindowsPath(windows_path)
    return subset_dir / "Images" / Path(*path.relative_to(path.anchor).parts[1:])


def read_deepdrid(root: Path) -> Iterator[Record]:
    """Records of the training and validation subsets, grouped by DeepDRiD's ``patient_id``.

    Each row grades one eye: ``left_eye_DR_Level`` for ``*_l*`` images and
    ``right_eye_DR_Level`` for ``*_r*`` (the other column is empty).
    """
    base = root / "regular_fundus_images"
    for subset, folder in _SUBSETS:

        def record(row: Row, subset: str = subset, folder: str = folder) -> Record:
            match = _EYE_SUFFIX.search(row["image_id"])
            eye = _EYES[match["side"]] if match else None
            return make_record(
                image_file(base / folder, row["image_path"]),
                row[f"{eye}_eye_DR_Level"] if eye else "",
                source=SOURCE,
                name=f"{subset}/{row['image_id']}",
                patient=row["patient_id"],
                eye=eye,
                subset=subset,
            )

        yield from records_from_rows(read_csv_rows(base / folder / f"{folder}.csv", _COLUMNS), SOURCE, record)
