"""Per-file checks: good images of every format pass, each kind of broken file gets its reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from corpus_layouts import GARBAGE, MISSING, OK, TRUNCATED, place_image

from retinascan_hf.corpus.schema import Exclusion
from retinascan_hf.corpus.validate import check_image, check_images

CASES = [
    ("a.jpeg", OK, None),
    ("b.jpg", OK, None),
    ("c.png", OK, None),
    ("d.tif", OK, None),
    ("e.jpeg", TRUNCATED, Exclusion.TRUNCATED_FILE),
    ("f.png", TRUNCATED, Exclusion.TRUNCATED_FILE),
    ("g.jpeg", GARBAGE, Exclusion.UNREADABLE_FILE),
    ("h.jpeg", MISSING, Exclusion.MISSING_FILE),
]


@pytest.mark.parametrize(("name", "state", "issue"), CASES)
def test_check_image(tmp_path: Path, name: str, state: str, issue: Exclusion | None) -> None:
    path = tmp_path / name
    place_image(path, state)
    check = check_image(str(path))
    assert check.issue == issue
    assert check.sha256 == (hashlib.sha256(path.read_bytes()).hexdigest() if issue is None else "")


def test_a_directory_is_excluded_not_fatal(tmp_path: Path) -> None:
    assert check_image(str(tmp_path)).issue == Exclusion.NOT_A_REGULAR_FILE


def test_worker_processes_give_the_same_checks_in_order(tmp_path: Path) -> None:
    paths = []
    for index, (name, state, _) in enumerate(CASES * 3):
        path = tmp_path / f"{index}-{name}"
        place_image(path, state)
        paths.append(str(path))
    serial = check_images(paths, num_proc=1, progress=False)
    assert check_images(paths, num_proc=2, progress=False) == serial
    assert [check.issue for check in serial] == [issue for _, _, issue in CASES * 3]
