"""The grading metrics against scikit-learn and torchmetrics on random inputs; degenerate and bad inputs;
the bootstrap against explicit resampling; the `evaluate` metric loaded offline in a fresh process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn import metrics as sk
from torchmetrics.functional.classification import multiclass_calibration_error

from retinascan_hf import compute_grading_metrics, metric_path
from retinascan_hf.metrics.grading import grading_metrics
from retinascan_hf.metrics.intervals import _resample_weights, _statistics

CUTS = {"referable": 2, "vision_threatening": 3}


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """References with a random grade mix (some grades often absent), noisy predictions, Dirichlet probabilities."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    mix = rng.dirichlet(np.full(5, 0.7))
    references = rng.choice(5, size=n, p=mix)
    predictions = np.clip(references + rng.integers(-2, 3, n) * (rng.random(n) < 0.5), 0, 4)
    probabilities = rng.dirichlet(np.full(5, 0.5), size=n)
    if seed % 3 == 0:  # ties in the screening scores: AUROC must count them one half
        probabilities = np.round(probabilities, 1)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    return references, predictions, probabilities


def same(value, oracle) -> bool:
    """Equal within float error, where NaN (scikit-learn's "undefined") must be our None."""
    if oracle is None or (isinstance(oracle, float) and math.isnan(oracle)):
        return value is None
    return value is not None and value == pytest.approx(float(oracle), abs=1e-9)


def binary_oracle(truth: np.ndarray, decided: np.ndarray) -> dict[str, float]:
    nan = {"zero_division": np.nan}
    return {
        "sensitivity": sk.recall_score(truth, decided, **nan),
        "specificity": sk.recall_score(~truth, ~decided, **nan),
        "ppv": sk.precision_score(truth, decided, **nan),
        "npv": sk.precision_score(~truth, ~decided, **nan),
    }


@pytest.mark.parametrize("seed", range(24))
def test_every_value_matches_its_oracle(seed):
    references, predictions, probabilities = random_case(seed)
    result = grading_metrics(references, predictions, probabilities)
    assert result["n"] == len(references)
    assert same(result["accuracy"], sk.accuracy_score(references, predictions))
    for key, weights in (("qwk", "quadratic"), ("linear_kappa", "linear")):
        with np.errstate(all="ignore"):
            assert same(result[key], sk.cohen_kappa_score(references, predictions, labels=range(5), weights=weights))
    assert same(result["mae"], sk.mean_absolute_error(references, predictions))
    assert same(result["off_by_one_accuracy"], np.mean(np.abs(references - predictions) <= 1))
    for average in ("macro", "weighted"):
        assert same(result[f"f1_{average}"], sk.f1_score(references, predictions, average=average, zero_division=0))
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        references, predictions, labels=range(5), zero_division=np.nan
    )
    for row in result["per_grade"]:
        grade = row["grade"]
        assert same(row["precision"], precision[grade]) and same(row["recall"], recall[grade])
        assert row["support"] == support[grade]
        assert same(row["f1"], f1[grade])  # NaN (absent from truth and prediction) must be None
    assert result["confusion_matrix"] == sk.confusion_matrix(references, predictions, labels=range(5)).tolist()
    for name, cut in CUTS.items():
        truth, decided = references >= cut, predictions >= cut
        figures = result[name]
        for statistic, oracle in binary_oracle(truth, decided).items():
            assert same(figures[statistic], oracle), (name, statistic)
        area = sk.roc_auc_score(truth, probabilities[:, cut:].sum(1)) if 0 < truth.sum() < len(truth) else None
        assert same(figures["auroc"], area)
        assert (figures["positives"], figures["negatives"]) == (truth.sum(), (~truth).sum())
    if seed % 3:  # rounded confidences sit on bin edges, where torchmetrics' [lo, hi) bins differ from (lo, hi]
        ece = multiclass_calibration_error(
            torch.from_numpy(probabilities), torch.from_numpy(references), num_classes=5, n_bins=15, norm="l1"
        )
        assert result["ece"] == pytest.approx(float(ece), abs=1e-6)
    assert same(result["brier"], sk.brier_score_loss(references, probabilities, labels=range(5)))


def test_ece_bins_are_closed_on_the_right():
    references = np.array([0, 0, 1, 1])
    assert grading_metrics(references, references, np.eye(5)[references])["ece"] == 0.0
    always_zero = np.tile(
        np.eye(5)[0], (4, 1)
    )  # certain of grade 0 (confidence 1.0: the last bin), right half the time
    assert grading_metrics(references, [0, 0, 0, 0], always_zero)["ece"] == pytest.approx(0.5)
    # 0.4 = 6/15 is an edge: it belongs to bin (5/15, 6/15], alone with 0.38, not with 0.41
    probabilities = np.array([[0.4, 0.15, 0.15, 0.15, 0.15], [0.38, 0.155, 0.155, 0.155, 0.155]])
    assert grading_metrics([0, 1], [0, 0], probabilities)["ece"] == pytest.approx(abs(0.5 - 0.39))


def no_nan(value) -> bool:
    if isinstance(value, dict):
        return all(no_nan(item) for item in value.values())
    if isinstance(value, list):
        return all(no_nan(item) for item in value)
    return not (isinstance(value, float) and math.isnan(value))


def test_degenerate_inputs_give_none_not_nan():
    one_grade = compute_grading_metrics([0, 0, 0], [0, 0, 0], np.eye(5)[[0, 0, 0]], n_bootstrap=50)
    assert one_grade["accuracy"] == 1.0 and one_grade["qwk"] is None and one_grade["linear_kappa"] is None
    referable = one_grade["referable"]
    assert referable["sensitivity"] is None and referable["ppv"] is None and referable["auroc"] is None
    assert referable["specificity"] == 1.0 and referable["npv"] == 1.0
    assert one_grade["per_grade"][3] == {"grade": 3, "precision": None, "recall": None, "f1": None, "support": 0}
    assert one_grade["confidence_intervals"]["qwk"] is None
    assert one_grade["confidence_intervals"]["referable"]["sensitivity"] is None
    assert one_grade["confidence_intervals"]["accuracy"] == [1.0, 1.0]
    no_positives = compute_grading_metrics([0, 1, 0, 1], [0, 1, 1, 0], n_bootstrap=20)
    assert no_positives["qwk"] == 0.0 and no_positives["ece"] is None and no_positives["brier"] is None
    assert no_positives["referable"]["auroc"] is None and no_positives["referable"]["sensitivity"] is None
    for result in (one_grade, no_positives):
        assert no_nan(result) and json.loads(json.dumps(result)) == result


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (([], []), "references is empty"),
        (([0, 1], [0]), "1 predictions for 2 references"),
        (([0, 5], [0, 1]), r"references must lie in \[0, 4\]"),
        (([0, 1], [0.0, float("nan")]), "predictions must hold integer grades"),
        (([0, 1], [0.5, 1]), "predictions must hold integer grades"),
        (([0, 1], ["a", "b"]), "predictions must hold integer grades"),
        (([[0, 1]], [[0, 1]]), "1-D sequence"),
        (([0, 1], [0, 1], [[1.0, 0, 0, 0, 0]]), r"shape \(2, 5\)"),
        (([0, 1], [0, 1], [[0.5] * 5] * 2), "sum to 1"),
        (([0, 1], [0, 1], [[float("nan")] * 5] * 2), "NaN"),
    ],
)
def test_bad_inputs_are_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        compute_grading_metrics(*arguments, n_bootstrap=0)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="referable_grade must lie"):
        compute_grading_metrics([0, 1], [0, 1], referable_grade=5)
    with pytest.raises(ValueError, match="patient_ids has 1 entries"):
        compute_grading_metrics([0, 1], [0, 1], patient_ids=["a"])
    with pytest.raises(ValueError, match="confidence must lie"):
        compute_grading_metrics([0, 1], [0, 1], confidence=1.5)


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_bootstrap_statistics_equal_explicit_resamples(seed):
    references, predictions, probabilities = random_case(seed + 1)
    rng = np.random.default_rng(seed)
    weights = _resample_weights(np.arange(len(references)), len(references), 5, rng)
    values = _statistics(references, predictions, probabilities, CUTS, 5, weights)
    for row, multiplicity in enumerate(weights.astype(int)):
        rows = np.repeat(np.arange(len(references)), multiplicity)
        expected = grading_metrics(references[rows], predictions[rows], probabilities[rows])
        for name, series in values.items():
            group, _, statistic = name.rpartition(".")
            oracle = (expected[group] if group else expected)[statistic]
            assert same(None if np.isnan(series[row]) else float(series[row]), oracle), name


def test_bootstrap_is_seeded_and_patient_level_when_ids_are_given():
    rng = np.random.default_rng(0)
    references = np.repeat(rng.integers(0, 5, 150), 2)  # both eyes of a patient share grade and decision
    predictions = np.repeat(np.clip(references[::2] + rng.integers(-1, 2, 150), 0, 4), 2)
    patients = np.repeat(np.arange(150), 2).astype(str)
    by_image = compute_grading_metrics(references, predictions, n_bootstrap=400, seed=1)
    again = compute_grading_metrics(references, predictions, n_bootstrap=400, seed=1)
    by_patient = compute_grading_metrics(references, predictions, patient_ids=patients, n_bootstrap=400, seed=1)
    assert by_image["confidence_intervals"] == again["confidence_intervals"]
    assert (
        by_image["confidence_intervals"]["unit"] == "image" and by_patient["confidence_intervals"]["unit"] == "patient"
    )

    def width(result):
        low, high = result["confidence_intervals"]["accuracy"]
        assert low <= result["accuracy"] <= high
        return high - low

    # Pairs of identical eyes carry the evidence of 150 images, not 300: about sqrt(2) wider intervals.
    assert 1.2 < width(by_patient) / width(by_image) < 1.7


def test_evaluate_loads_the_metric_offline_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(3)
    references, predictions, probabilities = random_case(4)
    payload = {
        "predictions": predictions.tolist(),
        "references": references.tolist(),
        "probabilities": probabilities.tolist(),
        "patient_ids": [f"p{index // 2}" for index in range(len(references))],
        "n_bootstrap": 200,
        "seed": int(rng.integers(100)),
    }
    (tmp_path / "inputs.json").write_text(json.dumps(payload))
    script = (
        "import json, sys, evaluate\n"
        "from retinascan_hf import metric_path\n"
        "metric = evaluate.load(metric_path())\n"
        "print(json.dumps(metric.compute(**json.load(open(sys.argv[1])))))\n"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "inputs.json")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert metric_path().endswith("retinascan_grading")
    reference_ids = payload.pop("references")
    expected = compute_grading_metrics(reference_ids, payload.pop("predictions"), **payload)
    assert loaded == json.loads(json.dumps(expected))
