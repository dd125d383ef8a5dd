"""Metrics against scikit-learn, and the calibration searches on logits with a known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from retinascan_hf.training.calibration import calibrate, fit_prototype_temperature, tune_coral_thresholds
from retinascan_hf.training.metrics import (
    confusion_matrix,
    expected_calibration_error,
    grading_report,
    quadratic_weighted_kappa,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qwk_and_confusion_matrix_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, 200)
    predicted = np.clip(truth + rng.integers(-2, 3, 200), 0, 4)
    assert quadratic_weighted_kappa(truth, predicted) == pytest.approx(
        cohen_kappa_score(truth, predicted, weights="quadratic")
    )
    assert (confusion_matrix(truth, predicted) == sklearn_confusion_matrix(truth, predicted, labels=range(5))).all()


def test_qwk_edge_cases():
    assert quadratic_weighted_kappa([2, 2, 2], [2, 2, 2]) == 1.0
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4], [0, 0, 0, 0, 0]) == 0.0
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4], [4, 3, 2, 1, 0]) == pytest.approx(-1.0)


def test_expected_calibration_error():
    labels = np.array([0, 0, 1, 1])
    perfect = np.eye(5)[labels]
    assert expected_calibration_error(perfect, labels) == 0.0
    overconfident = np.full((4, 5), 0.0)
    overconfident[:, 0] = 1.0  # always certain of grade 0, right half of the time
    assert expected_calibration_error(overconfident, labels) == pytest.approx(0.5)


def test_grading_report_per_grade_and_referable():
    report = grading_report([0, 0, 2, 3, 4, 1], [0, 2, 2, 1, 4, 1])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert [row["support"] for row in report["per_grade"]] == [2, 1, 1, 1, 1]
    assert report["per_grade"][0]["recall"] == 0.5 and report["per_grade"][2]["precision"] == 0.5
    assert report["referable_sensitivity"] == pytest.approx(2 / 3)
    assert report["referable_specificity"] == pytest.approx(2 / 3)


def ordinal_toy(seed: int = 0, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """CORAL-like logits (shared score minus ordered biases) whose zero thresholds are misplaced."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=generator)
    score = labels.float() + 0.6 * torch.randn(n, generator=generator)
    logits = 3.0 * (score[:, None] - torch.tensor([1.2, 2.4, 3.4, 4.1]))  # biased cut points, overconfident
    return logits, labels


def test_threshold_search_never_lowers_qwk_and_fixes_shifted_cut_points():
    logits, labels = ordinal_toy()
    thresholds = tune_coral_thresholds(logits, labels)
    result = calibrate(logits, torch.randn(len(labels), 5), labels)
    assert result.ordinal_qwk_after >= result.ordinal_qwk_before
    assert result.ordinal_qwk_after > result.ordinal_qwk_before + 0.02
    assert thresholds[0] < 0  # the first cut point sat too high: lowered


def test_prototype_temperature_lowers_ece_of_an_overconfident_softmax():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (500,), generator=generator)
    logits = 8.0 * (torch.nn.functional.one_hot(labels, 5).float() + 0.9 * torch.randn(500, 5, generator=generator))
    temperature = fit_prototype_temperature(logits, labels)
    before = expected_calibration_error(torch.softmax(logits, -1).numpy(), labels.numpy())
    after = expected_calibration_error(torch.softmax(logits / temperature, -1).numpy(), labels.numpy())
    assert temperature > 1.0 and after < before / 2
