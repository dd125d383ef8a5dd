"""The EyePACS adapter and a full build on the real Kaggle layout in ``../shared/data/eyepacs-256``.

Synthetic layouts cannot show that the adapter reads the file that Kaggle actually ships; this
does. CI points ``RETINASCAN_REAL_DATA`` at the shared ``data`` folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import pytest

from retinascan_hf.corpus import SPLITS, build_corpus
from retinascan_hf.corpus.adapters import ADAPTERS

pytestmark = pytest.mark.real_data

EYEPACS_GRADES = {0: 2034, 1: 182, 2: 409, 3: 58, 4: 26}


@pytest.fixture(scope="module")
def eyepacs_root(real_data_dir: Path) -> Path:
    return real_data_dir / "eyepacs-256"


def test_adapter_reads_the_kaggle_layout(eyepacs_root: Path) -> None:
    records = list(ADAPTERS["eyepacs"](eyepacs_root))
    assert len(records) == 2709 and all(record.issue is None for record in records)
    assert Counter(record.grade for record in records) == EYEPACS_GRADES
    assert len({record.patient_id for record in records}) == 1355
    assert {record.eye for record in records} == {"left", "right"}


def test_build_keeps_every_image_and_every_patient_on_one_side(eyepacs_root: Path, tmp_path: Path) -> None:
    report = build_corpus({"eyepacs": eyepacs_root}, tmp_path / "corpus", num_proc=2, progress=False)
    assert report.sources["eyepacs"].found == report.sources["eyepacs"].kept == 2709
    corpus = datasets.load_from_disk(str(tmp_path / "corpus"))
    grades: Counter[int] = Counter()
    split_of_patient: dict[str, set[str]] = {}
    for split in SPLITS:
        table = corpus[split].select_columns(["grade", "patient_id"])
        grades.update(table["grade"])
        for patient in table["patient_id"]:
            split_of_patient.setdefault(patient, set()).add(split)
    assert grades == EYEPACS_GRADES
    assert all(len(sides) == 1 for sides in split_of_patient.values()) and len(split_of_patient) == 1355
    assert {split: corpus[split].num_rows for split in SPLITS} == {
        split: sum(report.splits[split]["eyepacs"]) for split in SPLITS
    }
    assert all(corpus[split].num_rows > 0 for split in SPLITS)
