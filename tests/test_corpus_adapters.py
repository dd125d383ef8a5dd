"""Each adapter against a miniature of its published layout: ids, grades, patients, eyes, issues."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from corpus_layouts import (
    OK,
    aptos_layout,
    ddr_layout,
    deepdrid_layout,
    eyepacs_layout,
    gdrbench_layout,
    generic_csv_layout,
    idrid_layout,
    messidor2_layout,
    place_image,
)

from retinascan_hf.corpus.adapters import ADAPTERS
from retinascan_hf.corpus.schema import Exclusion, Record

UNGRADABLE, INVALID = Exclusion.UNGRADABLE, Exclusion.INVALID_GRADE


Fields = tuple[str, int | None, str, str | None, str | None, Exclusion | None]


def expect(
    image_id: str,
    grade: int | None,
    patient: str | None = None,
    eye: str | None = None,
    subset: str | None = None,
    issue: Exclusion | None = None,
) -> Fields:
    """The fields a test compares, with the defaults an adapter uses (patient = image id)."""
    return (image_id, grade, patient or image_id, eye, subset, issue)


def observed(record: Record) -> Fields:
    return (record.image_id, record.grade, record.patient_id, record.eye, record.subset, record.issue)


GDRBENCH_ROWS = [
    ("APTOS", 0, "a1.png", "train"),
    ("APTOS", 4, "a2.png", "crossval"),
    ("RLDR", 2, "10_left.jpeg", "train"),
    ("RLDR", 1, "10_right.jpeg", "train"),
]


def _gdrbench_with_splits(root: Path) -> Path:
    gdrbench_layout(root, GDRBENCH_ROWS, with_splits=True)
    place_image(root / "images" / "APTOS" / "nodr" / "not_listed.png")  # split files decide
    return root


CASES: dict[str, tuple[str, Callable[[Path], Path], list[Fields]]] = {
    "eyepacs": (
        "eyepacs",
        lambda root: eyepacs_layout(
            root, [("10009_left", 0, OK), ("10009_right", 2, OK), ("10029_left", 4, OK), ("10029_right", 9, OK)]
        ),
        [
            expect("eyepacs/10009_left", 0, "eyepacs/10009", "left"),
            expect("eyepacs/10009_right", 2, "eyepacs/10009", "right"),
            expect("eyepacs/10029_left", 4, "eyepacs/10029", "left"),
            expect("eyepacs/10029_right", None, "eyepacs/10029", "right", issue=INVALID),
        ],
    ),
    "aptos": (
        "aptos",
        lambda root: aptos_layout(root, [("000c1434d8d7", 2, OK), ("001639a390f0", 4, OK), ("0024cdab0c1e", "", OK)]),
        [
            expect("aptos/000c1434d8d7", 2),
            expect("aptos/001639a390f0", 4),
            expect("aptos/0024cdab0c1e", None, issue=INVALID),
        ],
    ),
    "idrid": (
        "idrid",
        lambda root: idrid_layout(
            root, {"train": [("IDRiD_001", 3, OK), ("IDRiD_002", 0, OK)], "test": [("IDRiD_001", 1, OK)]}
        ),
        [
            expect("idrid/train/IDRiD_001", 3, subset="train"),
            expect("idrid/train/IDRiD_002", 0, subset="train"),
            expect("idrid/test/IDRiD_001", 1, subset="test"),
        ],
    ),
    "ddr": (
        "ddr",
        lambda root: ddr_layout(
            root,
            {
                "train": [("007-0004-000.jpg", 0, OK), ("007-0005-000.jpg", 5, OK)],
                "valid": [("20170413102628830.jpg", 2, OK)],
                "test": [("20170413103136146.jpg", 4, OK)],
            },
        ),
        [
            expect("ddr/train/007-0004-000", 0, subset="train"),
            expect("ddr/train/007-0005-000", None, subset="train", issue=UNGRADABLE),
            expect("ddr/valid/20170413102628830", 2, subset="valid"),
            expect("ddr/test/20170413103136146", 4, subset="test"),
        ],
    ),
    "deepdrid": (
        "deepdrid",
        lambda root: deepdrid_layout(
            root, {"training": [(1, "1_l1", 0, OK), (1, "1_r1", 2, OK)], "validation": [(296, "296_l2", 3, OK)]}
        ),
        [
            expect("deepdrid/train/1_l1", 0, "deepdrid/1", "left", "train"),
            expect("deepdrid/train/1_r1", 2, "deepdrid/1", "right", "train"),
            expect("deepdrid/validation/296_l2", 3, "deepdrid/296", "left", "validation"),
        ],
    ),
    "messidor2": (
        "messidor2",
        lambda root: messidor2_layout(
            root,
            [
                ("20051020_43808_0100_PP.png", 0, 1, OK),
                ("IM002385.JPG", 3, 1, OK),
                ("20051020_44598_0100_PP.tif", "", 0, OK),
            ],
        ),
        [
            expect("messidor2/20051020_43808_0100_PP", 0),
            expect("messidor2/IM002385", 3),
            expect("messidor2/20051020_44598_0100_PP", None, issue=UNGRADABLE),
        ],
    ),
    "gdrbench-splits": (
        "gdrbench",
        _gdrbench_with_splits,
        [
            expect("gdrbench/aptos/a1", 0, subset="train"),
            expect("gdrbench/rldr/10_left", 2, "gdrbench/rldr/10", "left", "train"),
            expect("gdrbench/rldr/10_right", 1, "gdrbench/rldr/10", "right", "train"),
            expect("gdrbench/aptos/a2", 4, subset="crossval"),
        ],
    ),
    "gdrbench-folders": (
        "gdrbench",
        lambda root: gdrbench_layout(root, GDRBENCH_ROWS, with_splits=False),
        [
            expect("gdrbench/aptos/a1", 0),
            expect("gdrbench/aptos/a2", 4),
            expect("gdrbench/rldr/10_right", 1, "gdrbench/rldr/10", "right"),
            expect("gdrbench/rldr/10_left", 2, "gdrbench/rldr/10", "left"),
        ],
    ),
    "csv": (
        "csv",
        lambda root: generic_csv_layout(
            root / "labels.csv",
            "image_path,grade,source,patient_id",
            [("imgs/a/x.png", "1,clinic,p1", OK), ("imgs/b/x.png", "2,,", OK), ("imgs/c.jpg", "3,clinic,p1", OK)],
        ),
        [
            expect("clinic/imgs/a/x", 1, "csv/p1"),  # patients are namespaced by the CSV, not the source
            expect("csv/imgs/b/x", 2),
            expect("clinic/imgs/c", 3, "csv/p1"),
        ],
    ),
    "csv-two-columns": (
        "csv",
        lambda root: generic_csv_layout(
            root / "labels.csv", "image_path,grade", [("x.tif", "4", OK), ("y.tif", "2.0", OK)]
        ),
        [expect("csv/x", 4), expect("csv/y", 2)],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_adapter_reads_published_layout(tmp_path: Path, case: str) -> None:
    kind, write_layout, expected = CASES[case]
    records = list(ADAPTERS[kind](write_layout(tmp_path)))
    assert [observed(record) for record in records] == expected
    assert all(record.path.is_file() for record in records), "every listed file was written: paths must resolve"
    assert len({record.image_id for record in records}) == len(records)


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_missing_label_file_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    (tmp_path / "images").mkdir()  # an empty GDRBench tree still needs its images folder listed
    with pytest.raises(FileNotFoundError):
        list(ADAPTERS[kind](tmp_path / "labels.csv" if kind == "csv" else tmp_path / "nothing-here"))


def test_a_label_file_without_the_expected_columns_is_named(tmp_path: Path) -> None:
    (tmp_path / "trainLabels.csv").write_text("id_code,diagnosis\nabc,1\n")  # APTOS's file in EyePACS's place
    with pytest.raises(ValueError, match=r"lacks column\(s\) image, level; its header is id_code, diagnosis"):
        list(ADAPTERS["eyepacs"](tmp_path))
