"""`retinascan quickstart` and `retinascan train` through the console entry point."""

from __future__ import annotations

import json
import time

import datasets
import pytest

from retinascan_hf.cli import main
from retinascan_hf.synthetic import save_synthetic_corpus


def test_quickstart_writes_corpus_model_and_metrics_quickly(tmp_path, capsys):
    started = time.perf_counter()
    assert main(["quickstart", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert time.perf_counter() - started < 60  # the brief: under 2 minutes on 2 cores
    printed = capsys.readouterr().out
    assert "[4/4]" in printed and str(tmp_path) in printed
    corpus = datasets.load_from_disk(str(tmp_path / "corpus"))
    assert set(corpus) == {"train", "validation", "test"}
    assert (tmp_path / "model" / "feature_bank.safetensors").is_file()
    assert (tmp_path / "confusion_matrix.png").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["evaluation"]["test"]) == {"knn", "ordinal", "prototype"}
    assert metrics["data"]["train"]["images"] == len(corpus["train"])


def test_train_command_reads_yaml_and_flags(tmp_path, capsys):
    save_synthetic_corpus(tmp_path / "corpus", {"train": (5,) * 5, "validation": (2,) * 5}, size=32)
    config = tmp_path / "run.yaml"
    config.write_text("backbone: tiny\nnum_epochs: 3\nbatches_per_epoch: 2\nn_per_class: 2\nprogress: false\n")
    argv = ["train", "--config", str(config), "--data", str(tmp_path / "corpus"), "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--num-epochs", "2", "--cpu", "--cache-dir", str(tmp_path / "cache")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["training"]["epochs"] == 2 and metrics["config"]["n_per_class"] == 2
    assert "test" not in metrics["evaluation"]  # an empty test split is skipped, not an error
    assert "Model folder" in capsys.readouterr().out


def test_train_command_reports_bad_configuration(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--n-per-class", "0"]) == 2
    assert "n_per_class must be at least 1" in capsys.readouterr().err


def test_train_command_needs_data():
    with pytest.raises(ValueError, match="--data"):
        main(["train", "--backbone", "tiny", "--cpu"])
