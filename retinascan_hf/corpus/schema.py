"""The one row schema every adapter produces, whatever layout the data set was published in.

Adapters turn a published layout into :class:`Record` values that still point at image files;
nothing here decodes an image, so a 90k-image source costs a few megabytes of paths, and
``datasets.Image()`` decodes each image only when a row is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

# The ICDR names are the model config's labels: one list, so corpus and model can never disagree.
from ..configuration_retinascan import ICDR_LABELS

# The published subsets of GDRBench's split files (`splits/<SOURCE>_<subset>.txt`). They live here, not in
# the GDRBench adapter, because the generic split code reads them too and must not import an adapter.
GDRBENCH_SUBSETS: tuple[str, ...] = ("train", "crossval")


class Exclusion(str, Enum):
    """Why a row listed by a source is left out of the corpus (counted in the build report)."""

    UNGRADABLE = "ungradable"
    INVALID_GRADE = "invalid_grade"
    MALFORMED_ROW = "malformed_row"
    MISSING_FILE = "missing_file"
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    FILE_TOO_LARGE = "file_too_large"
    UNREADABLE_FILE = "unreadable_file"
    TRUNCATED_FILE = "truncated_file"
    DUPLICATE_ID = "duplicate_id"
    DUPLICATE_IMAGE = "duplicate_image"


@dataclass(frozen=True)
class Record:
    """One labelled image as listed by its source, before any file is opened.

    Attributes:
        path: the image file the source's label file points at (it may be missing).
        grade: ICDR grade 0-4, or None when ``issue`` says why there is none.
        source: the data set the row comes from; it prefixes ``image_id`` and ``patient_id``.
        image_id: unique across sources, e.g. ``"aptos/000c1434d8d7"``.
        patient_id: rows sharing it must land in the same split; the image id where the source
            does not say which images belong to one person.
        eye: ``"left"``/``"right"`` where the source records it, else None.
        subset: the source's own split the row is published in (``"train"``, ``"crossval"``...),
            which the GDRBench protocol follows; None where the source has a single list.
        issue: a label problem the adapter found (ungradable, out-of-range grade, malformed row).
        line: the line of the label file that lists the row (None for rows found by walking folders).
        detail: what is wrong with a malformed row, for the report.
    """

    path: Path
    grade: int | None
    source: str
    image_id: str
    patient_id: str
    eye: str | None = None
    subset: str | None = None
    issue: Exclusion | None = None
    line: int | None = None
    detail: str | None = None


__all__ = ["GDRBENCH_SUBSETS", "ICDR_LABELS", "Exclusion", "Record"]
