"""End-to-end builds over miniature layouts with broken files: report, splits, disk format."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import datasets
import pytest
from corpus_layouts import (
    GARBAGE,
    MISSING,
    OK,
    TRUNCATED,
    aptos_layout,
    ddr_layout,
    eyepacs_layout,
    gdrbench_layout,
    generic_csv_layout,
    messidor2_layout,
)

from retinascan_hf.corpus import REPORT_FILE, SPLITS, BuildReport, build_corpus, corpus_features

BROKEN = {"0_left": TRUNCATED, "1_right": GARBAGE, "2_left": MISSING}
EYEPACS_ROWS = [
    *(
        (f"{patient}_{eye}", (patient + (eye == "right")) % 5, BROKEN.get(f"{patient}_{eye}", OK))
        for patient in range(12)
        for eye in ("left", "right")
    ),
    ("9999_left", "x", OK),  # invalid grade
    ("10_left", 0, OK),  # listed twice
]
APTOS_ROWS = [(f"a{index:03d}", index % 5, OK) for index in range(12)]
DDR_SUBSETS = {
    "train": [(f"t{index}.jpg", 5 if index < 2 else index % 5, OK) for index in range(10)],
    "valid": [(f"v{index}.jpg", index, OK) for index in range(3)],
    "test": [(f"s{index}.jpg", index + 2, OK) for index in range(3)],
}
MESSIDOR_ROWS = [
    (f"IM{index:06d}.JPG", "" if index < 2 else index % 5, 0 if index < 2 else 1, OK) for index in range(10)
]

EXPECTED_SOURCES = {
    "aptos": {"found": 12, "kept": 12, "excluded": {}},
    "ddr": {"found": 16, "kept": 14, "excluded": {"ungradable": 2}},
    "eyepacs": {
        "found": 26,
        "kept": 20,
        "excluded": {
            "duplicate_id": 1,
            "duplicate_image": 1,
            "invalid_grade": 1,
            "missing_file": 1,
            "truncated_file": 1,
            "unreadable_file": 1,
        },
    },
    "messidor2": {"found": 10, "kept": 8, "excluded": {"ungradable": 2}},
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    layouts = {
        "eyepacs": eyepacs_layout(root / "eyepacs", EYEPACS_ROWS),
        "aptos": aptos_layout(root / "aptos", APTOS_ROWS),
        "ddr": ddr_layout(root / "ddr", DDR_SUBSETS),
        "messidor2": messidor2_layout(root / "messidor2", MESSIDOR_ROWS),
    }
    # the same photograph published in two sources: APTOS is read first (sorted kinds), so it wins
    shutil.copyfile(layouts["aptos"] / "train_images" / "a005.png", layouts["eyepacs"] / "train" / "5_left.jpeg")
    return layouts


@pytest.fixture(scope="module")
def built(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildReport, Path]:
    out = tmp_path_factory.mktemp("built") / "corpus"
    return build_corpus(sources, out, seed=0, progress=False), out


def split_ids(out: Path) -> dict[str, list[str]]:
    corpus = datasets.load_from_disk(str(out))
    return {split: corpus[split]["image_id"] for split in SPLITS}


def test_report_counts_every_exclusion_reason(built: tuple[BuildReport, Path]) -> None:
    report, _ = built
    assert {source: vars(counts) for source, counts in report.sources.items()} == EXPECTED_SOURCES
    duplicates = [row for row in report.excluded if row.reason.value == "duplicate_image"]
    assert [(row.image_id, row.duplicate_of) for row in duplicates] == [("eyepacs/5_left", "aptos/a005")]


def test_corpus_on_disk_has_the_schema_and_the_right_grades(built: tuple[BuildReport, Path]) -> None:
    report, out = built
    corpus = datasets.load_from_disk(str(out))
    assert list(corpus) == list(SPLITS)
    assert all(corpus[split].features == corpus_features() for split in SPLITS)
    rows = [row for split in SPLITS for row in corpus[split].cast_column("image", datasets.Image(decode=False))]
    assert len(rows) == report.num_kept == 54
    assert len({row["image_id"] for row in rows}) == len(rows)
    assert all(row["image"]["bytes"] for row in rows), "image bytes are embedded: the corpus is self-contained"
    written = {
        **{f"eyepacs/{name}": grade for name, grade, _ in EYEPACS_ROWS[:24]},
        **{f"aptos/{name}": grade for name, grade, _ in APTOS_ROWS},
        **{f"ddr/{subset}/{Path(name).stem}": grade for subset, rows in DDR_SUBSETS.items() for name, grade, _ in rows},
        **{f"messidor2/{Path(name).stem}": grade for name, grade, _, _ in MESSIDOR_ROWS},
    }
    assert all(row["grade"] == written[row["image_id"]] for row in rows)
    assert {row["eye"] for row in rows if row["source"] == "eyepacs"} == {"left", "right"}
    assert corpus["train"][0]["image"].size == (32, 32)  # decoded lazily, on access


def test_no_patient_crosses_splits_and_every_source_is_in_every_split(built: tuple[BuildReport, Path]) -> None:
    _, out = built
    corpus = datasets.load_from_disk(str(out))
    sides: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        for patient in corpus[split]["patient_id"]:
            sides[patient].add(split)
        assert set(corpus[split]["source"]) == set(EXPECTED_SOURCES), split
    assert all(len(names) == 1 for names in sides.values())
    assert sides["eyepacs/3"] and len(sides) == 12 + 12 + 14 + 8


def test_report_json_and_tables_agree_with_the_corpus(built: tuple[BuildReport, Path]) -> None:
    report, out = built
    assert json.loads((out / REPORT_FILE).read_text()) == json.loads(json.dumps(report.to_dict()))
    corpus = datasets.load_from_disk(str(out))
    header, rows = report.split_table()
    totals = {row[1]: row[-1] for row in rows if row[0] == "all"}
    assert totals == {split: corpus[split].num_rows for split in SPLITS}
    assert header[2:7] == list(corpus_features()["grade"].names)


def test_same_seed_rebuilds_identically_other_seed_differs(
    sources: dict[str, Path], built: tuple[BuildReport, Path], tmp_path: Path
) -> None:
    _, out = built
    reordered = dict(reversed(sources.items()))  # argument order must not matter either
    build_corpus(reordered, tmp_path / "same", seed=0, progress=False)
    build_corpus(sources, tmp_path / "other", seed=1, progress=False)
    assert split_ids(tmp_path / "same") == split_ids(out)
    assert split_ids(tmp_path / "other") != split_ids(out)


def test_rebuild_replaces_output_and_a_failed_build_leaves_it_intact(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    build_corpus({"aptos": sources["aptos"]}, out, progress=False)
    (out / "stale.txt").write_text("old")  # no longer exactly what the build wrote: kept, and the build refused
    with pytest.raises(FileExistsError, match=r"stale\.txt"):
        build_corpus({"aptos": sources["aptos"]}, out, progress=False)
    (out / "stale.txt").unlink()
    build_corpus({"aptos": sources["aptos"]}, out, progress=False)
    before = split_ids(out)
    with pytest.raises(ValueError, match="held-out source"):
        build_corpus({"aptos": sources["aptos"]}, out, protocol="loso:ddr", progress=False)
    assert split_ids(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus"], "no staging folder left behind"


def test_leave_one_source_out_build(sources: dict[str, Path], tmp_path: Path) -> None:
    build_corpus(sources, tmp_path / "loso", protocol="loso:ddr", num_proc=2, progress=False)
    corpus = datasets.load_from_disk(str(tmp_path / "loso"))
    assert set(corpus["test"]["source"]) == {"ddr"} and corpus["test"].num_rows == 14
    for split in ("train", "validation"):
        assert set(corpus[split]["source"]) == {"aptos", "eyepacs", "messidor2"}


def test_gdrbench_build_follows_split_files(tmp_path: Path) -> None:
    rows = [
        (domain, index % 5, f"{domain.lower()}{index}.png", "crossval" if index % 4 == 0 else "train")
        for domain in ("APTOS", "IDRID")
        for index in range(16)
    ]
    root = gdrbench_layout(tmp_path / "GDRBench", rows, with_splits=True)
    report = build_corpus({"gdrbench": root}, tmp_path / "in-domain", protocol="gdrbench", progress=False)
    corpus = datasets.load_from_disk(str(tmp_path / "in-domain"))
    crossval = {
        f"gdrbench/{domain.lower()}/{Path(file).stem}" for domain, _, file, subset in rows if subset == "crossval"
    }
    assert set(corpus["test"]["image_id"]) == crossval
    assert set(corpus["validation"]["source"]) == set(corpus["train"]["source"]) == {"gdrbench/aptos", "gdrbench/idrid"}
    assert report.protocol == "gdrbench"

    build_corpus({"gdrbench": root}, tmp_path / "lodo", protocol="gdrbench:gdrbench/idrid", progress=False)
    corpus = datasets.load_from_disk(str(tmp_path / "lodo"))
    assert set(corpus["test"]["source"]) == {"gdrbench/idrid"} and corpus["test"].num_rows == 16
    aptos_crossval = {image_id for image_id in crossval if image_id.startswith("gdrbench/aptos/")}
    assert set(corpus["validation"]["image_id"]) == aptos_crossval


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"val_ratio": 0.6, "test_ratio": 0.5}, "sum below 1"), ({"protocol": "bogus"}, "unknown protocol")],
)
def test_bad_settings_fail_before_any_work(
    sources: dict[str, Path], tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_corpus(sources, tmp_path / "never", progress=False, **kwargs)
    assert not (tmp_path / "never").exists()


def test_unknown_source_kind_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown source kind"):
        build_corpus({"kaggle": tmp_path}, tmp_path / "never", progress=False)


def test_saved_corpus_outlives_its_sources_and_keeps_empty_splits(sources: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(sources["aptos"], tmp_path / "aptos")
    build_corpus({"aptos": copy}, tmp_path / "corpus", test_ratio=0.0, progress=False)
    shutil.rmtree(copy)
    corpus = datasets.load_from_disk(str(tmp_path / "corpus"))
    assert corpus["test"].num_rows == 0
    assert corpus["train"].num_rows + corpus["validation"].num_rows == 12
    assert corpus["validation"][0]["image"].size == (32, 32)


def test_csv_patient_seen_by_two_cameras_stays_on_one_side(tmp_path: Path) -> None:
    rows = [
        (f"{camera}/{patient}_{eye}.png", f"{patient % 5},{camera},P{patient}", "ok")
        for patient in range(40)
        for camera in ("camA", "camB")
        for eye in ("l", "r")
    ]
    csv_path = generic_csv_layout(tmp_path / "csv" / "labels.csv", "image_path,grade,source,patient_id", rows)
    build_corpus({"csv": csv_path}, tmp_path / "out", seed=3, progress=False)
    corpus = datasets.load_from_disk(str(tmp_path / "out"))
    sides: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        for patient in corpus[split]["patient_id"]:
            sides[patient].add(split)
    assert len(sides) == 40 and all(len(names) == 1 for names in sides.values())
    assert {"camA", "camB"} <= set(corpus["train"]["source"])


@pytest.mark.parametrize("where", ["working_folder", "parent_of_source"])
def test_build_never_replaces_a_folder_it_did_not_write(tmp_path: Path, where: str) -> None:
    source = eyepacs_layout(tmp_path / "data" / "eyepacs", [("1_left", 0, OK), ("1_right", 1, OK)])
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    out = tmp_path if where == "working_folder" else tmp_path / "data"
    with pytest.raises((ValueError, FileExistsError)):
        build_corpus({"eyepacs": source}, out, progress=False)
    assert notes.read_text() == "keep me" and (source / "trainLabels.csv").is_file()
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("draft")
    with pytest.raises(FileExistsError, match=r"holds no \.retinascan-manifest\.json"):
        build_corpus({"eyepacs": source}, unrelated, progress=False)
    assert (unrelated / "thesis.tex").read_text() == "draft"
