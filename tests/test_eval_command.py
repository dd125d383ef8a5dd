"""`retinascan evaluate` on a freshly trained tiny model: every file, numbers equal to the metric module's,
one backbone pass shared by every mode, per-source and leave-one-source-out tables."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from training_support import small_config

import retinascan_hf
from retinascan_hf import FeatureBank, RetinaScanImageProcessor, RetinaScanModel
from retinascan_hf.cli import main
from retinascan_hf.corpus import REPORT_FILE
from retinascan_hf.evaluation import EVALUATION_MODES, EvaluationSettings, evaluate_model
from retinascan_hf.evaluation.modes import all_decisions
from retinascan_hf.metrics import compute_grading_metrics
from retinascan_hf.synthetic import synthetic_corpus
from retinascan_hf.training import run_training

COUNTS = {"train": (10, 8, 8, 6, 6), "validation": (6, 5, 5, 5, 5), "test": (6, 4, 4, 4, 4)}
SERVED = ("prototype", "ordinal", "knn")
FILES = ("report.json", "report.md", "confusion_matrix.png", "reliability_diagram.png", "roc_referable.png")


def two_sources(corpus: datasets.DatasetDict, split: str) -> datasets.DatasetDict:
    """Every other image of `split` comes from a second source (`other`), with its own patient ids."""
    renamed = corpus[split].map(
        lambda row, index: {"source": "other" if index % 2 else row["source"]}, with_indices=True
    )
    return datasets.DatasetDict({**corpus, split: renamed})


def assert_drawn_picture(path: Path) -> None:
    """A decodable plot of real size with many grey levels: drawn, not blank."""
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200, path.name
    assert pixels.std() > 10 and len(np.unique(pixels)) > 20, path.name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A corpus (two sources in test), a model trained on it, and the feature cache training filled."""
    root = tmp_path_factory.mktemp("evaluate")
    corpus = two_sources(synthetic_corpus(COUNTS, size=48, seed=0), "test")
    corpus.save_to_disk(str(root / "corpus"))
    config = small_config(root / "run", data=str(root / "corpus"), cache_dir=str(root / "cache"), num_epochs=6)
    result = run_training(config)
    return root, corpus, result.model_dir


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    root, _, model_dir = trained
    output = tmp_path_factory.mktemp("report")
    argv = ["evaluate", "--model", str(model_dir), "--data", str(root / "corpus"), "--output-dir", str(output)]
    assert main([*argv, "--cache-dir", str(root / "fresh-cache"), "--n-bootstrap", "200", "--no-progress"]) == 0
    return output, json.loads((output / "report.json").read_text())


def test_every_file_is_written_and_the_pictures_are_real(evaluated):
    output, report = evaluated
    assert {name for name in FILES} <= {path.name for path in output.iterdir()}
    assert not [path for path in output.iterdir() if path.name.startswith(".")]  # no temporary left behind
    for name in FILES[2:]:
        assert_drawn_picture(output / name)
    assert report["files"] == {
        "confusion_matrix": "confusion_matrix.png",
        "reliability_diagram": "reliability_diagram.png",
        "roc_referable": "roc_referable.png",
    }


def test_report_numbers_are_the_metric_modules(trained, evaluated):
    _, corpus, model_dir = trained
    _, report = evaluated
    test = corpus["test"]
    assert list(report["modes"]) == list(EVALUATION_MODES) and report["images"] == len(test)
    model = RetinaScanModel.from_pretrained(model_dir)
    processor = RetinaScanImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():  # an independent pass: straight through the backbone, no cache
        features = model.forward_features(processor(list(test["image"]))["pixel_values"])
    decisions, _ = all_decisions(model, features, FeatureBank.from_pretrained(model_dir))
    references = np.asarray(test["grade"])
    for mode, decision in decisions.items():
        expected = compute_grading_metrics(
            references,
            decision.grades.numpy(),
            decision.scores.double().numpy(),
            list(test["patient_id"]),
            n_bootstrap=200,
            seed=0,
        )
        reported = report["modes"][mode]
        assert reported["confusion_matrix"] == expected["confusion_matrix"], mode
        for key in ("qwk", "accuracy", "linear_kappa", "mae", "f1_macro", "ece", "brier"):
            assert reported[key] == pytest.approx(expected[key], abs=1e-6), (mode, key)
        assert reported["referable"] == pytest.approx(expected["referable"], abs=1e-6)
        assert reported["confidence_intervals"]["qwk"] == pytest.approx(expected["confidence_intervals"]["qwk"])
        assert reported["confidence_intervals"]["unit"] == "patient"
        assert [row["recall"] for row in reported["per_grade"]] == pytest.approx(
            [row["recall"] for row in expected["per_grade"]]
        )
        assert ("grade_sets" in reported) == (mode in SERVED)


def test_markdown_has_one_row_per_mode_with_intervals_and_the_other_tables(evaluated):
    output, report = evaluated
    markdown = (output / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and " [" in line]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(EVALUATION_MODES)
    qwk = report["modes"]["knn"]["qwk"]
    low, high = report["modes"]["knn"]["confidence_intervals"]["qwk"]
    assert f"| knn | {qwk:.3f} [{low:.3f}, {high:.3f}] |" in markdown
    assert "## Conformal grade sets (target coverage 90%)" in markdown and "## Per source" in markdown
    assert "Leave-one-source-out" not in markdown and report["leave_one_source_out"] is None
    for name in ("confusion_matrix.png", "reliability_diagram.png", "roc_referable.png"):
        assert f"]({name})" in markdown


def test_per_source_breakdown_covers_every_image(evaluated):
    _, report = evaluated
    per_source = report["per_source"]
    assert set(per_source) == {"synthetic", "other"}
    for mode in EVALUATION_MODES:
        counts = [per_source[source][mode]["n"] for source in per_source]
        assert sum(counts) == report["images"]
        matrices = sum(np.asarray(per_source[source][mode]["confusion_matrix"]) for source in per_source)
        assert matrices.tolist() == report["modes"][mode]["confusion_matrix"]


def test_one_backbone_pass_serves_every_mode_and_training_features_are_reused(
    trained, tmp_path, count_backbone_forwards
):
    root, corpus, model_dir = trained
    settings = EvaluationSettings(cache_dir=str(tmp_path / "cache"), n_bootstrap=0, progress=False)
    first = evaluate_model(model_dir, root / "corpus", tmp_path / "a", settings)
    # six modes, one pass: each image once, in forwards of one fixed shape (the last padded; see
    # `fixed_shape_features`), so features never depend on the images sharing a forward
    assert count_backbone_forwards == [settings.batch_size] * -(-len(corpus["test"]) // settings.batch_size)
    assert first.report["feature_cache"]["computed"] == len(corpus["test"])
    count_backbone_forwards.clear()
    evaluate_model(model_dir, root / "corpus", tmp_path / "b", settings)
    assert count_backbone_forwards == []
    training_cache = EvaluationSettings(cache_dir=str(root / "cache"), n_bootstrap=0, progress=False)
    reused = evaluate_model(model_dir, root / "corpus", tmp_path / "c", training_cache)
    assert count_backbone_forwards == []  # training cached the test features under the same fingerprint
    assert reused.report["feature_cache"]["reused"] == len(corpus["test"])
    assert reused.report["modes"]["knn"]["qwk"] == first.report["modes"]["knn"]["qwk"]


def test_leave_one_source_out_corpus_gets_its_table(trained, tmp_path):
    root, corpus, model_dir = trained
    held_out = datasets.DatasetDict(
        {**corpus, "test": corpus["test"].map(lambda row: {"source": "other"})}  # the whole test split: one source
    )
    held_out.save_to_disk(str(tmp_path / "corpus"))
    (tmp_path / "corpus" / REPORT_FILE).write_text(json.dumps({"protocol": "loso:other"}))
    settings = EvaluationSettings(cache_dir=str(root / "cache"), n_bootstrap=0, progress=False)
    report = evaluate_model(model_dir, tmp_path / "corpus", tmp_path / "out", settings).report
    loso = report["leave_one_source_out"]
    assert loso["held_out_source"] == "other" and loso["in_domain_sources"] == ["synthetic"]
    assert loso["in_domain_images"] == len(corpus["validation"])
    for mode in EVALUATION_MODES:
        assert loso["modes"][mode]["qwk"]["held_out"] == report["modes"][mode]["qwk"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Leave-one-source-out: held out `other`" in markdown
    no_validation = datasets.DatasetDict({"train": held_out["train"], "test": held_out["test"]})
    no_validation.save_to_disk(str(tmp_path / "no-validation"))
    (tmp_path / "no-validation" / REPORT_FILE).write_text(json.dumps({"protocol": "gdrbench:other"}))
    skipped = evaluate_model(model_dir, tmp_path / "no-validation", tmp_path / "out2", settings).report
    assert "no split 'validation'" in skipped["leave_one_source_out"]["skipped"]


def test_trained_model_is_calibrated_for_grade_sets_with_every_grade_reachable(trained):
    _, _, model_dir = trained
    config = RetinaScanModel.from_pretrained(model_dir).config
    assert set(config.conformal_scores) == set(SERVED)
    assert config.conformal_calibration_size == sum(COUNTS["validation"])
    metrics = json.loads((model_dir.parent / "metrics.json").read_text())
    assert metrics["calibration"]["unreachable_grades"] == []
    assert 0 <= metrics["evaluation"]["test"]["ordinal"]["grade_sets"]["coverage"] <= 1


def test_bad_requests_are_clear_errors(trained, tmp_path, capsys):
    root, _, model_dir = trained
    with pytest.raises(ValueError, match="no split 'train2'"):
        evaluate_model(model_dir, root / "corpus", tmp_path, EvaluationSettings(split="train2", progress=False))
    with pytest.raises(ValueError, match="coverage"):
        EvaluationSettings(coverage=1.5)
    with pytest.raises(ValueError, match="n_bootstrap"):
        EvaluationSettings(n_bootstrap=-1)
    argv = ["evaluate", "--model", str(model_dir), "--data", str(root / "corpus"), "--output-dir", str(tmp_path)]
    assert main([*argv, "--coverage", "1.5"]) == 2
    assert "coverage must lie strictly between 0 and 1" in capsys.readouterr().err
    corpus = datasets.load_from_disk(str(root / "corpus"))
    empty = datasets.DatasetDict({**corpus, "test": corpus["test"].select([])})
    empty.save_to_disk(str(tmp_path / "empty"), num_shards={"test": 1})
    with pytest.raises(ValueError, match="is empty"):
        evaluate_model(model_dir, tmp_path / "empty", tmp_path, EvaluationSettings(progress=False))


def test_training_evaluation_and_metrics_never_import_the_pipeline():
    """Evaluation grades with `decide` beside the model, not with serving code (nor the loader built on it)."""
    package = Path(retinascan_hf.__file__).parent
    offenders = []
    for folder in ("training", "evaluation", "metrics"):
        for path in (package / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or "", *(alias.name for alias in node.names)]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                if any(part in ("pipeline_retinascan", "loading") for name in names for part in name.split(".")):
                    offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []


def test_evaluate_on_the_quickstart_model_writes_every_file_with_trainings_numbers(tmp_path):
    """The README's example: `retinascan evaluate` on what `retinascan quickstart` wrote, reading training's feature
    cache (no backbone pass), agrees with the test-split figures training computed with the same metric module."""
    run = tmp_path / "retinascan-quickstart"
    assert main(["quickstart", "--output-dir", str(run), "--no-progress"]) == 0
    argv = ["evaluate", "--model", str(run / "model"), "--data", str(run / "corpus"), "--no-progress"]
    assert main([*argv, "--output-dir", str(tmp_path / "report"), "--cache-dir", str(run / "feature-cache")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {path.name for path in (tmp_path / "report").iterdir()} >= set(FILES)
    for name in FILES[2:]:
        assert_drawn_picture(tmp_path / "report" / name)
    assert report["feature_cache"]["computed"] == 0 and report["feature_cache"]["reused"] == report["images"]
    trained = json.loads((run / "metrics.json").read_text())["evaluation"]["test"]
    for mode in SERVED:
        for key in ("qwk", "accuracy", "mae"):
            assert report["modes"][mode][key] == pytest.approx(trained[mode][key], abs=1e-9), (mode, key)
