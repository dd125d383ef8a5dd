"""Issue 7, items 4 and 11: hostile label files and image paths never relabel, hang, crash or end empty.

Item 4: a duplicated or missing column is an error naming file and column; an empty result is an error; too
few patients for a split is a warning in `build_report.json` (and the log). Item 11: only regular files are
read, size-capped; an overlong field, a NUL byte, a Latin-1 byte each cost their own row, which is excluded
and counted with its line number; a header that cannot be decoded names the file and the byte position.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from corpus_layouts import OK, ddr_layout, eyepacs_layout, gdrbench_layout, place_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retinascan_hf.cli import main
from retinascan_hf.corpus import REPORT_FILE, EmptySourceError, build_corpus
from retinascan_hf.corpus.adapters import ADAPTERS, common
from retinascan_hf.corpus.adapters.common import LabelFileError
from retinascan_hf.corpus.schema import Exclusion

HEADER = b"image_path,grade,patient_id\n"


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A FIFO read blocks forever: fail the test after 30 s instead of hanging the suite."""

    def hung(signum, frame):
        raise TimeoutError("the build hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def good_rows(folder: Path, count: int) -> list[bytes]:
    """`count` rows of real images, one patient each, grades cycling 0-4."""
    rows = []
    for index in range(count):
        place_image(folder / f"img{index}.png", OK)
        rows.append(f"img{index}.png,{index % 5},p{index}".encode())
    return rows


def write_csv(path: Path, lines: list[bytes], header: bytes = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"".join(line + b"\n" for line in lines))
    return path


def report_of(out: Path) -> dict:
    return json.loads((out / REPORT_FILE).read_text())


def excluded_lines(report: dict) -> dict[int, tuple[str, str | None]]:
    return {row["line"]: (row["reason"], row["detail"]) for row in report["excluded"] if row["line"] is not None}


# ---------------------------------------------------------------- item 4: columns and empty results


@pytest.mark.parametrize(
    ("header", "column"),
    [
        (b"image_path,grade,grade\n", "grade"),
        (b"image_path, grade ,grade\n", "grade"),
        (b"a,image_path,grade,a\n", "a"),
    ],
)
def test_a_column_named_twice_is_an_error_naming_file_and_column(tmp_path: Path, header: bytes, column: str) -> None:
    csv_path = write_csv(tmp_path / "labels.csv", [b"x.png,1,4"], header=header)
    with pytest.raises(LabelFileError, match=rf"labels\.csv: column '{column}' appears 2 times"):
        build_corpus({"csv": csv_path}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_missing_column_is_an_error_naming_file_and_column(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "labels.csv", [b"x.png,1"], header=b"image_path,level\n")
    with pytest.raises(LabelFileError, match=r"labels\.csv lacks column\(s\) grade"):
        build_corpus({"csv": csv_path}, tmp_path / "out", progress=False)


@pytest.mark.parametrize("content", [HEADER, b"", HEADER + b"\n,,\n  \n"], ids=["header-only", "empty", "blank-rows"])
def test_a_label_file_without_rows_is_an_error_not_an_empty_corpus(tmp_path: Path, content: bytes) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(content)
    with pytest.raises(ValueError, match=r"lists no rows|lacks column"):
        build_corpus({"csv": csv_path}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_source_whose_every_row_is_excluded_is_an_error_naming_the_reasons(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "labels.csv", [b"a.png,7,p1", b"b.png,x,p2", b"c.png,,p3"])
    good = eyepacs_layout(tmp_path / "eyepacs", [(f"{p}_left", p % 5, OK) for p in range(10)])
    with pytest.raises(EmptySourceError, match=r"No image of the csv source .* 3 row\(s\) listed.*invalid_grade 3"):
        build_corpus({"csv": csv_path, "eyepacs": good}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_cli_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = write_csv(tmp_path / "labels.csv", [b"x.png,1,4"], header=b"image_path,grade,grade\n")
    assert main(["data", "build", "--source", f"csv={csv_path}", "--out", str(tmp_path / "out")]) == 2
    assert "column 'grade' appears 2 times" in capsys.readouterr().err


def test_too_few_patients_for_a_split_is_a_warning_in_the_report_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv_path = write_csv(tmp_path / "labels.csv", good_rows(tmp_path, 2))
    with caplog.at_level(logging.WARNING):
        report = build_corpus({"csv": csv_path}, tmp_path / "out", progress=False)
    saved = report_of(tmp_path / "out")["warnings"]
    assert saved == report.warnings
    assert any("validation split is empty" in warning for warning in saved)
    assert any("test split is empty" in warning for warning in saved)
    assert any("train split holds only 2 patient(s)" in warning for warning in saved)
    assert any("Source 'csv' has 2 patient(s)" in warning for warning in saved)
    assert all(warning in caplog.text for warning in saved)


# ---------------------------------------------------------------- item 11: hostile rows and files


def test_each_hostile_row_is_excluded_and_counted_with_its_line(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    hostile = [
        b"pipe.png,1,h1",  # line 7: a FIFO (reading it would block forever)
        b"/dev/zero,2,h2",  # line 8: a device that never ends
        b"zero.png,2,h3",  # line 9: a symlink to it
        b"folder.png,3,h4",  # line 10: a folder
        b"a" * 200_000 + b".png,1,h5",  # line 11: a 200,000-character field
        b"nul\x00name.png,1,h6",  # line 12: a NUL byte in a path
        b"caf\xe9.png,2,h7",  # line 13: a Latin-1 byte
        b"x" * 5000 + b".png,1,h8",  # line 14: a 5,004-character field within the line limit
        b",2,h9",  # line 15: an empty path
        b"img0.png,1\x1b,h10",  # line 16: an escape character
    ]
    csv_path = write_csv(tmp_path / "labels.csv", [*good_rows(tmp_path, 5), *hostile])
    report = build_corpus({"csv": csv_path}, tmp_path / "out", progress=False)
    assert report.num_kept == 5
    excluded = excluded_lines(report_of(tmp_path / "out"))
    assert {line: reason for line, (reason, _) in excluded.items()} == {
        7: "not_a_regular_file",
        8: "not_a_regular_file",
        9: "not_a_regular_file",
        10: "not_a_regular_file",
        11: "malformed_row",
        12: "malformed_row",
        13: "malformed_row",
        14: "malformed_row",
        15: "malformed_row",
        16: "malformed_row",
    }
    assert "200009 bytes long" in excluded[11][1]
    assert "control character '\\x00'" in excluded[12][1]
    position = len(HEADER) + sum(len(line) + 1 for line in [*good_rows(tmp_path, 5), *hostile[:6]]) + 3
    assert excluded[13][1] == f"byte 0xe9 at byte {position} of the file is not UTF-8"
    assert "5004 characters long" in excluded[14][1]
    assert report_of(tmp_path / "out")["sources"]["csv"] == {
        "found": 15,
        "kept": 5,
        "excluded": {"malformed_row": 6, "not_a_regular_file": 4},
    }


def test_an_image_above_the_size_cap_is_excluded_not_read_whole(tmp_path: Path, monkeypatch) -> None:
    from retinascan_hf.corpus import validate

    rows = good_rows(tmp_path, 6)
    (tmp_path / "huge.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    monkeypatch.setattr(validate, "MAX_IMAGE_BYTES", 4096)  # the real cap is 64 MiB
    report = build_corpus(
        {"csv": write_csv(tmp_path / "l.csv", [*rows, b"huge.png,1,x"])}, tmp_path / "o", progress=False
    )
    assert report.sources["csv"].excluded == {"file_too_large": 1}
    assert excluded_lines(report_of(tmp_path / "o"))[8][0] == "file_too_large"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("image_path,grade\n".encode("utf-16"), r"labels\.csv: cannot read its header \(line 1\): byte 0xff at byte 0"),
        (b"image_path,gr\xe4de\nx.png,1\n", r"labels\.csv: cannot read its header .* byte 0xe4 at byte 13"),
        (b"image_path,grade\x00\n", r"labels\.csv: cannot read its header .* control character"),
    ],
    ids=["utf-16", "latin-1-header", "nul-in-header"],
)
def test_a_header_that_cannot_be_decoded_names_file_and_byte(tmp_path: Path, content: bytes, message: str) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(content)
    with pytest.raises(LabelFileError, match=message):
        build_corpus({"csv": csv_path}, tmp_path / "out", progress=False)


def test_a_label_file_that_is_a_fifo_or_too_large_is_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(LabelFileError, match=r"labels\.csv is a FIFO"):
        build_corpus({"csv": tmp_path / "labels.csv"}, tmp_path / "out", progress=False)
    big = write_csv(tmp_path / "big.csv", good_rows(tmp_path, 3))
    monkeypatch.setattr(common, "MAX_LABEL_FILE_BYTES", 40)  # the real cap is 256 MiB
    with pytest.raises(LabelFileError, match=r"big\.csv is larger than the 40-byte limit"):
        build_corpus({"csv": big}, tmp_path / "out", progress=False)


def test_listing_files_exclude_bad_lines_with_their_number(tmp_path: Path) -> None:
    root = ddr_layout(
        tmp_path / "ddr", {"train": [(f"t{i}.jpg", i % 5, OK) for i in range(6)], "valid": [], "test": []}
    )
    listing = root / "DR_grading" / "train.txt"
    listing.write_bytes(listing.read_bytes() + b"caf\xe9.jpg 1\nnul\x00.jpg 2\n")
    records = list(ADAPTERS["ddr"](root))
    malformed = [(record.line, record.detail) for record in records if record.issue == Exclusion.MALFORMED_ROW]
    assert [line for line, _ in malformed] == [7, 8]
    assert "0xe9" in malformed[0][1] and "'\\x00'" in malformed[1][1]
    assert sum(record.issue is None for record in records) == 6


def test_a_fifo_among_walked_images_is_excluded_not_skipped(tmp_path: Path) -> None:
    root = gdrbench_layout(
        tmp_path / "GDRBench", [("APTOS", g % 5, f"a{g}.png", "") for g in range(10)], with_splits=False
    )
    os.mkfifo(root / "images" / "APTOS" / "nodr" / "pipe.png")
    report = build_corpus({"gdrbench": root}, tmp_path / "out", progress=False)
    assert report.sources["gdrbench/aptos"].excluded == {"not_a_regular_file": 1}


def test_crlf_and_byte_order_marks_still_read(tmp_path: Path) -> None:
    rows = good_rows(tmp_path, 3)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + HEADER.replace(b"\n", b"\r\n") + b"".join(row + b"\r\n" for row in rows))
    records = list(ADAPTERS["csv"](csv_path))
    assert [(record.grade, record.line, record.issue) for record in records] == [
        (0, 2, None),
        (1, 3, None),
        (2, 4, None),
    ]


# ---------------------------------------------------------------- property: any hostile line costs one row

POISON = [b"\x00", b"\xff", b"\xfe", b"\xc0", b"\x1b", b"\x7f"]  # never in a valid row, whatever surrounds them
hostile_line = st.builds(
    lambda head, poison, tail: head + poison + tail,
    st.binary(max_size=40).map(lambda data: data.replace(b"\n", b"")),
    st.sampled_from(POISON),
    st.binary(max_size=40).map(lambda data: data.replace(b"\n", b"")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.lists(st.one_of(st.just(None), hostile_line), min_size=1, max_size=12))
def test_hostile_lines_cost_exactly_their_own_row(tmp_path_factory: pytest.TempPathFactory, layout) -> None:
    """`None` places a good row; every other entry is a line holding a byte no row may hold."""
    folder = tmp_path_factory.mktemp("csv")
    good = iter(good_rows(folder, layout.count(None)))
    lines = [next(good) if entry is None else entry for entry in layout]
    records = list(ADAPTERS["csv"](write_csv(folder / "labels.csv", lines)))
    assert [record.line for record in records] == list(range(2, len(lines) + 2))
    for entry, record in zip(layout, records, strict=True):
        if entry is None:
            assert record.issue is None and record.path.is_file()
        else:
            assert record.issue == Exclusion.MALFORMED_ROW and record.detail
            assert record.path == folder / "labels.csv"
            json.dumps(record.detail)  # reportable as it is
