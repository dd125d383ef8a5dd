"""`retinascan quickstart` and `retinascan train` through the console entry point."""

from __future__ import annotations

import json
import re

import datasets
import pytest

from retinascan_hf.cli import main
from retinascan_hf.synthetic import save_synthetic_corpus

PROGRESS_BAR = re.compile(r"\d+%\|")  # what every tqdm bar prints


def test_quickstart_writes_corpus_model_and_metrics(tmp_path, capsys):
    # Its duration is a benchmark figure (README), not a test assertion: timings on a shared CPU are noise.
    assert main(["quickstart", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[4/4]" in printed and str(tmp_path) in printed
    corpus = datasets.load_from_disk(str(tmp_path / "corpus"))
    assert set(corpus) == {"train", "validation", "test"}
    assert (tmp_path / "model" / "feature_bank.safetensors").is_file()
    assert (tmp_path / "confusion_matrix.png").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["evaluation"]["test"]) == {"knn", "ordinal", "prototype"}
    assert metrics["data"]["train"]["images"] == len(corpus["train"])
    report = json.loads((tmp_path / "corpus" / "build_report.json").read_text())  # what the model card reads
    assert {split: sum(report["splits"][split]["synthetic"]) for split in corpus} == {
        split: len(rows) for split, rows in corpus.items()
    }
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"| synthetic | {len(corpus['train'])} | {len(corpus['validation'])} | {len(corpus['test'])} | 0 |" in card


def test_train_command_reads_yaml_and_flags(tmp_path, capsys):
    save_synthetic_corpus(tmp_path / "corpus", {"train": (5,) * 5, "validation": (2,) * 5}, size=32)
    config = tmp_path / "run.yaml"
    config.write_text("backbone: tiny\nnum_epochs: 3\nbatches_per_epoch: 2\nn_per_class: 2\n")
    argv = ["train", "--config", str(config), "--data", str(tmp_path / "corpus"), "--output-dir", str(tmp_path / "out")]
    capsys.readouterr()
    assert main([*argv, "--num-epochs", "2", "--cpu", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["training"]["epochs"] == 2 and metrics["config"]["n_per_class"] == 2
    assert "test" not in metrics["evaluation"]  # an empty test split is skipped, not an error
    printed = capsys.readouterr()
    assert "Model folder" in printed.out
    assert not PROGRESS_BAR.search(printed.err)  # --no-progress: neither ours nor a library's bars


def one_error_line(capsys) -> str:
    """The command's stderr, checked to be exactly one line and no traceback."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_train_command_reports_bad_configuration(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("n_per_class: 0\n")
    assert main(["train", "--data", str(tmp_path), "--config", str(config)]) == 2
    assert "n_per_class must be at least 1" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "No corpus given: pass --data DIR"),
        (["--data", "{tmp}/missing"], "Corpus folder {tmp}/missing does not exist"),
        (["--data", "{tmp}/corpus"], r"has no image of grade 3 \(Severe NPDR\).*Add images of that grade"),
    ],
    ids=["no-data", "missing-folder", "grade-without-images"],
)
def test_training_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    save_synthetic_corpus(tmp_path / "corpus", {"train": (3, 3, 3, 0, 3), "validation": (1,) * 5}, size=32)
    argv = [item.format(tmp=tmp_path) for item in argv]
    capsys.readouterr()
    assert main(["train", "--backbone", "tiny", "--cpu", "--output-dir", str(tmp_path / "out"), *argv]) == 2
    line = one_error_line(capsys)
    assert line.startswith("retinascan train: error: ") and re.search(message.format(tmp=tmp_path), line)
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before any work


def test_debug_flag_or_variable_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="No corpus given"):
        main(["train", "--backbone", "tiny", "--debug"])
    monkeypatch.setenv("RETINASCAN_DEBUG", "1")
    with pytest.raises(ValueError, match="No corpus given"):
        main(["train", "--backbone", "tiny"])


def test_train_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0 and text.startswith("usage: retinascan train")
    assert "--n-per-class" in text and "--config FILE.yaml" in text and "~/.cache/huggingface" in text


def test_a_synthetic_corpus_of_no_images_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="at least one image"):
        save_synthetic_corpus(tmp_path / "corpus", {"train": (0, 0, 0, 0, 0)}, size=32)
    assert not (tmp_path / "corpus").exists()
