"""Parsing shared by the adapters: label files as published, and grade text to a checked grade."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..schema import ICDR_LABELS, Exclusion, Record


def read_csv_rows(path: Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
    """Rows of a published CSV with header names and cells stripped.

    Published headers carry stray whitespace (IDRiD's ``"Risk of macular edema "``), spreadsheet
    exports add a UTF-8 byte-order mark, surplus empty cells and trailing empty rows; none of
    that should decide whether a column is found. A file without the ``required`` columns is the
    wrong file, which is worth a clear error rather than a ``KeyError`` on the first row.
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or ()]
        missing = [column for column in required if column not in header]
        if missing:
            raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; its header is {', '.join(header)}")
        for row in reader:
            cells = {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}
            if any(cells.values()):
                yield cells


def read_listing(path: Path) -> Iterator[tuple[str, str]]:
    """``(file, label)`` pairs from a space-separated listing (DDR and GDRBench split files).

    A line without a label yields an empty label, which the grade check then rejects, so one
    malformed line costs one row rather than the build.
    """
    with path.open(encoding="utf-8-sig") as handle:
        for line in handle:
            parts = line.strip().rsplit(maxsplit=1)
            if parts:
                yield parts[0], parts[1] if len(parts) == 2 else ""


def parse_grade(text: str) -> int | None:
    """The ICDR grade written in ``text``, or None when it is not one of 0-4.

    ``"2.0"`` is accepted because label files re-saved with pandas store grades as floats.
    """
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and 0 <= value < len(ICDR_LABELS) else None


def make_record(
    path: Path,
    grade_text: str,
    *,
    source: str,
    name: str,
    patient: str | None = None,
    patient_namespace: str | None = None,
    eye: str | None = None,
    subset: str | None = None,
    ungradable: bool = False,
) -> Record:
    """A :class:`Record` whose ids are namespaced by ``source`` and whose label is checked.

    Prefixing here, once, is what keeps ``image_id`` and ``patient_id`` unique across sources.
    ``patient_namespace`` (default: ``source``) prefixes the patient instead, for label files whose
    patient ids are shared by rows of different sources (one patient, two cameras).
    """
    grade = None if ungradable else parse_grade(grade_text)
    if ungradable:
        issue = Exclusion.UNGRADABLE
    elif grade is None:
        issue = Exclusion.INVALID_GRADE
    else:
        issue = None
    image_id = f"{source}/{name}"
    return Record(
        path=path,
        grade=grade,
        source=source,
        image_id=image_id,
        patient_id=f"{patient_namespace or source}/{patient}" if patient is not None else image_id,
        eye=eye,
        subset=subset,
        issue=issue,
    )
