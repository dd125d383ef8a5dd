"""Grading metrics in numpy: quadratic weighted kappa, calibration error, and a per-grade report.

Kept free of scikit-learn (a development-only dependency); the tests check them against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..configuration_retinascan import ICDR_LABELS


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int = 5) -> np.ndarray:
    """Counts `[true grade, predicted grade]`, shape `[num_labels, num_labels]`."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def quadratic_weighted_kappa(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int = 5) -> float:
    """Cohen's kappa with quadratic weights: agreement beyond chance, where a grade off by two costs four
    times a grade off by one. 1 is perfect, 0 is chance level (e.g. always predicting one grade)."""
    observed = confusion_matrix(y_true, y_pred, num_labels).astype(np.float64)
    total = observed.sum()
    if total == 0:
        raise ValueError("quadratic_weighted_kappa needs at least one prediction.")
    grades = np.arange(num_labels)
    weights = (grades[:, None] - grades[None, :]) ** 2 / (num_labels - 1) ** 2
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    chance_disagreement = (weights * expected).sum()
    if chance_disagreement == 0:  # one grade only, in truth and prediction: kappa is undefined
        return 1.0 if (weights * observed).sum() == 0 else 0.0
    return float(1.0 - (weights * observed).sum() / chance_disagreement)


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], n_bins: int = 15) -> float:
    """Top-label ECE: the confidence-weighted gap between stated confidence and accuracy, over `n_bins`
    equal-width confidence bins."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    error = 0.0
    for index in np.unique(bins):
        members = bins == index
        error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def grading_report(
    y_true: Sequence[int], y_pred: Sequence[int], num_labels: int = 5, *, referable_grade: int = 2
) -> dict[str, Any]:
    """QWK, accuracy, per-grade recall/precision/support, the confusion matrix, and referable-DR
    (grade >= `referable_grade`, the model config's cut-off) sensitivity and specificity, as plain Python."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, num_labels)
    labels = ICDR_LABELS if num_labels == len(ICDR_LABELS) else tuple(str(grade) for grade in range(num_labels))
    per_grade = []
    for grade in range(num_labels):
        support, predicted = int(matrix[grade].sum()), int(matrix[:, grade].sum())
        hits = int(matrix[grade, grade])
        per_grade.append(
            {
                "grade": grade,
                "label": labels[grade],
                "support": support,
                "recall": hits / support if support else None,
                "precision": hits / predicted if predicted else None,
            }
        )
    referable_true, referable_pred = y_true >= referable_grade, y_pred >= referable_grade
    return {
        "qwk": quadratic_weighted_kappa(y_true, y_pred, num_labels),
        "accuracy": float((y_true == y_pred).mean()),
        "n": len(y_true),
        "per_grade": per_grade,
        "referable_sensitivity": _rate(referable_pred[referable_true]),
        "referable_specificity": _rate(~referable_pred[~referable_true]),
        "confusion_matrix": matrix.tolist(),
    }


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


__all__ = [
    "confusion_matrix",
    "expected_calibration_error",
    "grading_report",
    "quadratic_weighted_kappa",
]
