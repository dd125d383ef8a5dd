"""``retinascan data build`` through the top-level console entry point."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from corpus_layouts import GARBAGE, OK, aptos_layout, eyepacs_layout

from retinascan_hf.cli import main
from retinascan_hf.corpus import ICDR_LABELS, REPORT_FILE


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return {
        "eyepacs": eyepacs_layout(
            tmp_path / "eyepacs",
            [
                (f"{patient}_{eye}", patient % 5, GARBAGE if patient == 0 else OK)
                for patient in range(10)
                for eye in ("left", "right")
            ],
        ),
        "aptos": aptos_layout(tmp_path / "aptos", [(f"a{index}", index % 5, OK) for index in range(10)]),
    }


def build_args(sources: dict[str, Path], out: Path, *extra: str) -> list[str]:
    pairs = [argument for kind, path in sources.items() for argument in ("--source", f"{kind}={path}")]
    return ["data", "build", *pairs, "--out", str(out), *extra]


def test_build_prints_the_tables_and_writes_corpus_and_report(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "corpus"
    extra = ["--protocol", "merged", "--seed", "3", "--val-ratio", "0.2", "--test-ratio", "0.2", "--num-proc", "1"]
    assert main(build_args(sources, out, *extra, "--no-progress")) == 0
    captured = capsys.readouterr()
    assert "%|" not in captured.err  # neither our image check's bar nor datasets' saving bars
    printed = captured.out
    assert all(name in printed for name in ICDR_LABELS)
    assert "unreadable_file" in printed and "Saved 28 images" in printed
    report = json.loads((out / REPORT_FILE).read_text())
    assert (report["protocol"], report["seed"], report["val_ratio"], report["test_ratio"]) == ("merged", 3, 0.2, 0.2)
    assert report["sources"]["eyepacs"] == {"found": 20, "kept": 18, "excluded": {"unreadable_file": 2}}
    assert sum(split.num_rows for split in datasets.load_from_disk(str(out)).values()) == 28


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("eyepacs", "expects KIND=PATH"),
        ("eyepacs=", "expects KIND=PATH"),
        ("kaggle=/data", "unknown source kind 'kaggle'"),
    ],
)
def test_malformed_sources_are_usage_errors(
    source: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", "--source", source, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_kind_given_twice_is_a_usage_error(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_args(sources, tmp_path / "out", "--source", f"aptos={sources['aptos']}")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "source kind 'aptos' given twice" in capsys.readouterr().err


def test_configuration_errors_exit_2_with_a_message(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(build_args(sources, tmp_path / "out", "--protocol", "loso:ddr")) == 2
    assert "held-out source 'ddr'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_push_to_hub_hands_the_built_corpus_to_the_library(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(
        "retinascan_hf.corpus.hub.push_corpus",
        lambda corpus_dir, report, repo_id, *, private: calls.append((corpus_dir, report.num_kept, repo_id, private)),
    )
    out = tmp_path / "corpus"
    assert main(build_args(sources, out, "--push-to-hub", "someone/dr-corpus")) == 0
    assert calls == [(out, 28, "someone/dr-corpus", True)]
