"""Protocols on file-less records: patient grouping, stratification, ratios, seeds, LOSO, GDRBench."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from retinascan_hf.corpus.schema import Record
from retinascan_hf.corpus.split import SPLITS, Protocol, assign_splits

RATIOS = {"val_ratio": 0.1, "test_ratio": 0.1}
SIZES = {"big": 200, "mid": 50, "tiny": 7}  # patients per source


def make_records(sizes: dict[str, int], *, subsets: Sequence[str | None] = (None,)) -> list[Record]:
    """Two eyes per patient, grades skewed like DR data (mostly 0, few 3-4)."""
    rng = np.random.default_rng(0)
    records = []
    for source, patients in sizes.items():
        for patient in range(patients):
            for eye in ("left", "right"):
                grade = int(rng.choice(5, p=[0.6, 0.1, 0.18, 0.07, 0.05]))
                records.append(
                    Record(
                        path=Path(f"/{source}/{patient}_{eye}.jpeg"),
                        grade=grade,
                        source=source,
                        image_id=f"{source}/{patient}_{eye}",
                        patient_id=f"{source}/{patient}",
                        eye=eye,
                        subset=subsets[patient % len(subsets)],
                    )
                )
    return records


def patients_per_split(records: Sequence[Record], splits: Sequence[str]) -> dict[str, dict[str, set[str]]]:
    """``result[source][split]`` = patient ids."""
    result: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for record, split in zip(records, splits, strict=True):
        result[record.source][split].add(record.patient_id)
    return result


def test_merged_keeps_patients_whole_and_gives_exact_quotas() -> None:
    records = make_records(SIZES)
    splits = assign_splits(records, Protocol.parse("merged"), seed=0, **RATIOS)
    sides = defaultdict(set)
    for record, split in zip(records, splits, strict=True):
        sides[record.patient_id].add(split)
    assert all(len(names) == 1 for names in sides.values()), "a patient crosses splits"
    counts = {
        source: [len(per_split[split]) for split in SPLITS]
        for source, per_split in patients_per_split(records, splits).items()
    }
    # largest remainder, and every split gets a patient of every source (tiny: 5.6/0.7/0.7 -> 5/1/1)
    assert counts == {"big": [160, 20, 20], "mid": [40, 5, 5], "tiny": [5, 1, 1]}


def test_merged_stratifies_each_source_by_worst_grade() -> None:
    records = make_records(SIZES)
    splits = assign_splits(records, Protocol.parse("merged"), seed=3, **RATIOS)
    worst: dict[str, int] = {}
    for record in records:
        worst[record.patient_id] = max(worst.get(record.patient_id, 0), record.grade or 0)
    split_of = dict(zip((record.patient_id for record in records), splits, strict=True))
    strata = Counter((patient.split("/")[0], grade) for patient, grade in worst.items())
    per_split = Counter((patient.split("/")[0], grade, split_of[patient]) for patient, grade in worst.items())
    for (source, grade), size in strata.items():
        for split, ratio in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
            assert abs(per_split[source, grade, split] - ratio * size) < 2, (source, grade, split)


def test_same_seed_same_splits_other_seed_other_splits() -> None:
    records = make_records(SIZES)
    merged = Protocol.parse("merged")
    first = assign_splits(records, merged, seed=7, **RATIOS)
    assert assign_splits(records, merged, seed=7, **RATIOS) == first
    assert assign_splits(records, merged, seed=8, **RATIOS) != first


def test_adding_a_source_leaves_the_others_untouched() -> None:
    merged = Protocol.parse("merged")
    alone = make_records({"big": 200})
    together = make_records({"big": 200, "extra": 30})
    before = assign_splits(alone, merged, seed=1, **RATIOS)
    after = assign_splits(together, merged, seed=1, **RATIOS)
    assert after[: len(alone)] == before


def test_leave_one_source_out() -> None:
    records = make_records(SIZES)
    splits = assign_splits(records, Protocol.parse("loso:mid"), seed=0, **RATIOS)
    per_source = {
        source: Counter(split for r, split in zip(records, splits, strict=True) if r.source == source)
        for source in SIZES
    }
    assert set(per_source["mid"]) == {"test"}
    for source in ("big", "tiny"):
        assert set(per_source[source]) == {"train", "validation"}
    with pytest.raises(ValueError, match="held-out source 'nope'"):
        assign_splits(records, Protocol.parse("loso:nope"), seed=0, **RATIOS)


def test_gdrbench_in_domain_tests_on_crossval_and_carves_validation_from_train() -> None:
    records = make_records({"gdrbench/aptos": 40, "gdrbench/idrid": 20}, subsets=("train", "train", "crossval"))
    splits = assign_splits(records, Protocol.parse("gdrbench"), seed=0, **RATIOS)
    for record, split in zip(records, splits, strict=True):
        assert (split == "test") == (record.subset == "crossval")
    assert {split for record, split in zip(records, splits, strict=True) if record.subset == "train"} == {
        "train",
        "validation",
    }


def test_gdrbench_leave_one_domain_out_follows_the_reference_loader() -> None:
    records = make_records({"gdrbench/aptos": 10, "gdrbench/idrid": 10}, subsets=("train", "crossval"))
    splits = assign_splits(records, Protocol.parse("gdrbench:gdrbench/idrid"), seed=0, **RATIOS)
    expected = [
        "test" if r.source == "gdrbench/idrid" else {"train": "train", "crossval": "validation"}[r.subset]
        for r in records
    ]
    assert splits == expected


def test_gdrbench_protocol_refuses_sources_without_split_files() -> None:
    records = make_records({"gdrbench/aptos": 4}, subsets=("train", "crossval")) + make_records({"eyepacs": 4})
    with pytest.raises(ValueError, match="sources have none: eyepacs"):
        assign_splits(records, Protocol.parse("gdrbench"), seed=0, **RATIOS)


@pytest.mark.parametrize(
    ("text", "held_out"),
    [("merged", None), ("loso:aptos", "aptos"), ("gdrbench", None), ("gdrbench:gdrbench/aptos", "gdrbench/aptos")],
)
def test_protocol_round_trips(text: str, held_out: str | None) -> None:
    protocol = Protocol.parse(text)
    assert protocol.held_out == held_out and str(protocol) == text


@pytest.mark.parametrize("text", ["", "loso", "merged:aptos", "random"])
def test_protocol_rejects_unknown_forms(text: str) -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        Protocol.parse(text)


@pytest.mark.parametrize("patients", [1, 2])
def test_sources_too_small_for_every_split_stay_in_train(patients: int) -> None:
    """Fewer patients than splits: proportional rounding keeps them for training."""
    records = make_records({"small": patients})
    assert set(assign_splits(records, Protocol.parse("merged"), seed=0, **RATIOS)) == {"train"}
