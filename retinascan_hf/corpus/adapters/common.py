"""Parsing shared by the adapters: label files as published, and grade text to a checked grade.

Label files come from other people's tools and typos, so one bad row must cost that row, never the build:

* files are read through `read_regular_file` (no FIFO, device or folder; at most `MAX_LABEL_FILE_BYTES`);
* text is UTF-8 (a byte-order mark is skipped). A header that does not decode is an error naming the file
  and the byte position; a data line that does not decode is excluded as `malformed_row`, with its line
  number and the offending byte in the report;
* one row per line: a quoted field cannot span lines, so a stray quote costs one row, not the rest of the
  file;
* a line longer than `MAX_LINE_BYTES`, a field longer than `MAX_FIELD_CHARS`, or a control character (a NUL
  byte in a path...) makes the row malformed; so does a row that an adapter cannot turn into a record.

A header naming a column twice (`image_path,grade,grade`) is an error: which cell holds the grade would be a
guess, and a wrong guess relabels every row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..files import MAX_LABEL_FILE_BYTES, FileTooLargeError, NotRegularFileError, read_regular_file
from ..schema import ICDR_LABELS, Exclusion, Record

MAX_LINE_BYTES = 64 * 1024
"""Longest line of a label file; a row holds ids, a path and a grade."""

MAX_FIELD_CHARS = 4096
"""Longest cell (the longest path Linux accepts)."""

_BOM = b"\xef\xbb\xbf"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but the tab, and DEL


class LabelFileError(ValueError):
    """A label file that cannot be read at all; the message names the file and where the problem is."""


@dataclass(frozen=True)
class Row:
    """One line of a label file: its cells by column name, or the `problem` that makes it unreadable.

    Attributes:
        file: the label file (for a row found by walking folders, the image file itself).
        line: 1-based line number in `file` (None for rows found by walking folders).
        cells: column name -> stripped cell text; every required column is present (possibly empty).
        problem: why the row is malformed; its cells are then empty.
    """

    file: Path
    line: int | None
    cells: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    def __getitem__(self, column: str) -> str:
        return self.cells[column]

    def get(self, column: str, default: str | None = None) -> str | None:
        return self.cells.get(column, default)


def _label_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """`(line number, byte offset, bytes without the newline)` of every line of a label file."""
    try:
        data = read_regular_file(path, MAX_LABEL_FILE_BYTES)
    except (NotRegularFileError, FileTooLargeError) as error:
        raise LabelFileError(f"Cannot read label file: {error}") from error
    offset = len(_BOM) if data.startswith(_BOM) else 0
    number = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        end = len(data) if end < 0 else end
        number += 1
        yield number, offset, data[offset:end]
        offset = end + 1


def _decode(raw: bytes, offset: int) -> tuple[str, str | None]:
    """The text of a line, or why it is unusable (too long, not UTF-8, a control character)."""
    if len(raw) > MAX_LINE_BYTES:
        return "", f"the line is {len(raw)} bytes long (limit {MAX_LINE_BYTES})"
    try:
        text = raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError as error:
        return "", f"byte 0x{raw[error.start]:02x} at byte {offset + error.start} of the file is not UTF-8"
    control = _CONTROL.search(text)
    if control:
        return "", f"the line holds control character {control.group()!r} at column {control.start() + 1}"
    return text, None


def _cell_problem(cells: dict[str, str]) -> str | None:
    for name, value in cells.items():
        if len(value) > MAX_FIELD_CHARS:
            return f"field {name!r} is {len(value)} characters long (limit {MAX_FIELD_CHARS})"
    return None


def read_csv_rows(path: Path, required: Sequence[str]) -> Iterator[Row]:
    """Rows of a published CSV with header names and cells stripped; blank rows are skipped.

    Published headers carry stray whitespace (IDRiD's ``"Risk of macular edema "``), spreadsheet exports add
    a byte-order mark, surplus empty cells and trailing empty rows; none of that should decide whether a
    column is found. A file without the ``required`` columns is the wrong file, which is worth a clear error
    rather than a ``KeyError`` on the first row.

    Raises:
        FileNotFoundError: no file at `path`.
        LabelFileError: not a regular file, too large, a header that does not decode, a column named twice,
            or a required column missing; the message names the file.
    """
    lines = _label_lines(path)
    header: list[str] = []
    for _, offset, raw in lines:
        text, problem = _decode(raw, offset)
        if problem:
            raise LabelFileError(f"{path}: cannot read its header (line 1): {problem}. Label files must be UTF-8.")
        header = [name.strip() for name in next(csv.reader([text]), [])]
        break
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise LabelFileError(
            f"{path}: column {repeated[0]!r} appears {header.count(repeated[0])} times in the header "
            f"({', '.join(header)}), so which cell holds its value is ambiguous. Rename or remove the copies."
        )
    missing = [column for column in required if column not in header]
    if missing:
        raise LabelFileError(f"{path} lacks column(s) {', '.join(missing)}; its header is {', '.join(header)}")
    for number, offset, raw in lines:
        text, problem = _decode(raw, offset)
        if problem:
            yield Row(path, number, problem=problem)
            continue
        try:
            values = next(csv.reader([text]), [])
        except csv.Error as error:
            yield Row(path, number, problem=f"not a CSV row ({error})")
            continue
        if not any(value.strip() for value in values):
            continue
        cells = {name: value.strip() for name, value in zip(header, values, strict=False) if name}
        cells.update({column: "" for column in required if column not in cells})
        problem = _cell_problem(cells)
        yield Row(path, number, {} if problem else cells, problem)


def read_listing(path: Path) -> Iterator[Row]:
    """Rows ``{"file", "label"}`` of a space-separated listing (DDR and GDRBench split files).

    A line without a label yields an empty label, which the grade check then rejects, so one malformed line
    costs one row rather than the build.
    """
    for number, offset, raw in _label_lines(path):
        text, problem = _decode(raw, offset)
        parts = text.strip().rsplit(maxsplit=1)
        if problem:
            yield Row(path, number, problem=problem)
        elif parts:
            cells = {"file": parts[0], "label": parts[1] if len(parts) == 2 else ""}
            problem = _cell_problem(cells)
            yield Row(path, number, {} if problem else cells, problem)


def records_from_rows(rows: Iterable[Row], source: str, to_record: Callable[[Row], Record]) -> Iterator[Record]:
    """`to_record` of every row, with its line number; a malformed row becomes an excluded `malformed_row`.

    A row is malformed when the reader found a problem, when `to_record` raises `ValueError` (an empty or
    impossible path...), or when the record's text would not survive being saved (a control character, text
    that is not valid Unicode). `source` names the malformed rows, whose own cells cannot be trusted.
    """
    for row in rows:
        problem, record = row.problem, None
        if problem is None:
            try:
                record = _checked(replace(to_record(row), line=row.line))
            except ValueError as error:
                problem = str(error)
        if record is None:
            name = f"{row.file.name}:{row.line}" if row.line is not None else row.file.name
            record = Record(
                path=row.file,
                grade=None,
                source=source,
                image_id=f"{source}/{name}",
                patient_id=f"{source}/{name}",
                issue=Exclusion.MALFORMED_ROW,
                line=row.line,
                detail=problem,
            )
        yield record


def _checked(record: Record) -> Record:
    """`record`, or `ValueError` when a text field holds a control character or is not valid Unicode."""
    for name in ("image_id", "patient_id", "source", "eye", "path"):
        text = str(getattr(record, name) or "")
        if _CONTROL.search(text):
            raise ValueError(f"{name} {text!r} holds a control character")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} {text!r} is not valid Unicode (a file name in another encoding?)") from None
    return record


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
