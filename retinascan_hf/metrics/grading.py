"""Point estimates of every grading metric, in plain numpy: the one implementation behind training, the
`retinascan evaluate` report and the `evaluate` metric.

Almost everything derives from one object, the (optionally weighted) confusion matrix, and the functions
that read it accept leading batch axes: that is how [`bootstrap_intervals`] scores a thousand resamples in
a few matrix products instead of a thousand Python loops, with the very formulas reported here.

Undefined values are `None` in public results, never NaN:
- kappa when truth and prediction are one and the same grade (chance agreement is already perfect);
- sensitivity without positives, specificity without negatives, PPV without predicted positives, NPV
  without predicted negatives, AUROC when the truth holds a single class;
- a grade's recall without support, its precision when it is never predicted, its F1 when it is absent
  from truth and prediction alike (macro/weighted F1 average the grades that occur, as scikit-learn does);
- ECE and Brier score without probabilities.
Empty or malformed inputs raise `ValueError` naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ECE_BINS = 15
PROBABILITY_TOLERANCE = 1e-3  # rows of float32 softmax output sum to 1 within ~1e-6; anything far off is a bug
SCREENING_STATISTICS = ("sensitivity", "specificity", "ppv", "npv")


def check_grades(values: Any, name: str, num_labels: int) -> np.ndarray:
    """`values` as a 1-D int64 array of grades in `[0, num_labels)`, or a `ValueError` saying what is wrong."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of grades, got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty: metrics need at least one graded image.")
    if array.dtype.kind not in "iuf" and array.dtype != bool:
        raise ValueError(f"{name} must hold integer grades, got dtype {array.dtype}.")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise ValueError(f"{name} must hold integer grades; it holds non-integer or non-finite values.")
    grades = array.astype(np.int64)
    if grades.min() < 0 or grades.max() >= num_labels:
        raise ValueError(f"{name} must lie in [0, {num_labels - 1}], got {grades.min()}..{grades.max()}.")
    return grades


def check_probabilities(values: Any, n: int, num_labels: int) -> np.ndarray:
    """`values` as an `[n, num_labels]` float64 array of grade distributions, or a `ValueError`."""
    probs = np.asarray(values, dtype=np.float64)
    if probs.shape != (n, num_labels):
        raise ValueError(f"probabilities must have shape ({n}, {num_labels}), got {probs.shape}.")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities hold NaN or infinite values.")
    if probs.min() < -PROBABILITY_TOLERANCE or np.abs(probs.sum(axis=1) - 1.0).max() > PROBABILITY_TOLERANCE:
        raise ValueError("probabilities must be non-negative rows that sum to 1 (one grade distribution per image).")
    return probs


def check_cut(cut: int, name: str, num_labels: int) -> int:
    if not 1 <= int(cut) < num_labels:
        raise ValueError(f"{name} must lie in [1, {num_labels - 1}], got {cut}.")
    return int(cut)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`numerator / denominator` with NaN (internally: "undefined") where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def defined(value: Any) -> float | None:
    """A scalar as a Python float, `None` where undefined: the boundary where internal NaN ends."""
    value = float(value)
    return None if np.isnan(value) else value


def confusion_matrix(
    references: np.ndarray, predictions: np.ndarray, num_labels: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Counts `[..., true grade, predicted grade]`. `weights` `[B, N]` (resample multiplicities) give one
    matrix per row; without them the result is one `[K, K]` int64 matrix."""
    pairs = references * num_labels + predictions
    if weights is None:
        return np.bincount(pairs, minlength=num_labels**2).reshape(num_labels, num_labels)
    one_hot = np.zeros((len(pairs), num_labels**2))
    one_hot[np.arange(len(pairs)), pairs] = 1.0
    return (weights @ one_hot).reshape(*weights.shape[:-1], num_labels, num_labels)


def accuracy_from_confusion(matrix: np.ndarray) -> np.ndarray:
    return _divide(np.trace(matrix, axis1=-2, axis2=-1), matrix.sum(axis=(-2, -1)))


def kappa_from_confusion(matrix: np.ndarray, weighting: str) -> np.ndarray:
    """Cohen's kappa with `"quadratic"` or `"linear"` disagreement weights (NaN where undefined).

    Quadratic: a grade off by two costs four times a grade off by one. 1 is perfect agreement, 0 chance.
    """
    num_labels = matrix.shape[-1]
    grades = np.arange(num_labels)
    distance = np.abs(grades[:, None] - grades[None, :]).astype(np.float64)
    weights = {"quadratic": distance**2, "linear": distance}[weighting]
    matrix = matrix.astype(np.float64)
    total = matrix.sum(axis=(-2, -1))[..., None, None]
    expected = _divide(matrix.sum(axis=-1)[..., :, None] * matrix.sum(axis=-2)[..., None, :], total)
    observed = (weights * matrix).sum(axis=(-2, -1))
    return 1.0 - _divide(observed, (weights * expected).sum(axis=(-2, -1)))


def screening_from_confusion(matrix: np.ndarray, cut: int) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and NPV of "grade >= cut" (true vs decided grade), NaN where undefined."""
    tp = matrix[..., cut:, cut:].sum(axis=(-2, -1))
    fn = matrix[..., cut:, :cut].sum(axis=(-2, -1))
    fp = matrix[..., :cut, cut:].sum(axis=(-2, -1))
    tn = matrix[..., :cut, :cut].sum(axis=(-2, -1))
    return {
        "sensitivity": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "ppv": _divide(tp, tp + fp),
        "npv": _divide(tn, tn + fn),
    }


def auroc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Area under the ROC curve: the probability that a random positive outscores a random negative, ties
    counting one half (the trapezoidal ROC area). `weights` `[B, N]` give one area per row; NaN where a row
    lacks positives or negatives."""
    weights = np.ones((1, len(scores))) if weights is None else np.atleast_2d(weights)
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # groups of tied scores
    sorted_weights = weights[:, order]
    positives = np.add.reduceat(sorted_weights * sorted_positive, starts, axis=1)
    negatives = np.add.reduceat(sorted_weights * (1.0 - sorted_positive), starts, axis=1)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    wins = (positives * (negatives_below + 0.5 * negatives)).sum(axis=1)
    return _divide(wins, positives.sum(axis=1) * negatives.sum(axis=1))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold, from (0, 0) to (1, 1) (for plots)."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order].astype(np.float64)
    ends = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), len(scores) - 1]  # last of each tie
    true_positives = np.cumsum(sorted_positive)[ends]
    false_positives = (ends + 1) - true_positives
    return (
        np.r_[0.0, _divide(false_positives, false_positives[-1])],
        np.r_[0.0, _divide(true_positives, true_positives[-1])],
    )


def exceedance(probabilities: np.ndarray, cut: int) -> np.ndarray:
    """`P(grade >= cut)` per row: the screening score the ROC curves rank by."""
    return probabilities[:, cut:].sum(axis=1)


@dataclass
class ReliabilityBins:
    """Top-label reliability in equal-width confidence bins `((m-1)/M, m/M]` (Guo et al., 2017).

    Attributes: `counts` `[M]`, `confidence` and `accuracy` `[M]` (mean per bin; NaN for empty bins),
    `edges` `[M + 1]`.
    """

    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    edges: np.ndarray

    @property
    def expected_calibration_error(self) -> float:
        """Bin-weighted mean |accuracy - confidence|."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / self.counts.sum())


def reliability_bins(probabilities: Any, references: Any, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Confidence (top probability) against accuracy (top grade == truth) in `n_bins` bins."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    references = np.asarray(references)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}.")
    if len(references) == 0:
        raise ValueError("Calibration needs at least one graded image.")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == references).astype(np.float64)
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    return ReliabilityBins(
        counts=counts,
        confidence=_divide(np.bincount(index, confidence, n_bins), counts),
        accuracy=_divide(np.bincount(index, correct, n_bins), counts),
        edges=np.linspace(0.0, 1.0, n_bins + 1),
    )


def expected_calibration_error(probabilities: Any, references: Any, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE over `n_bins` equal-width confidence bins (15 by default)."""
    return reliability_bins(probabilities, references, n_bins).expected_calibration_error


def brier_score(probabilities: np.ndarray, references: np.ndarray) -> float:
    """Mean over images of the summed squared error between the grade distribution and the one-hot truth."""
    one_hot = np.eye(probabilities.shape[1])[references]
    return float(((probabilities - one_hot) ** 2).sum(axis=1).mean())


def quadratic_weighted_kappa(
    references: Sequence[int], predictions: Sequence[int], num_labels: int = 5
) -> float | None:
    """Quadratic weighted kappa of two grade sequences; `None` when undefined (see the module docstring)."""
    references = check_grades(references, "references", num_labels)
    predictions = check_grades(predictions, "predictions", num_labels)
    _check_lengths(references, predictions)
    return defined(kappa_from_confusion(confusion_matrix(references, predictions, num_labels), "quadratic"))


def per_grade(matrix: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of every grade, `None` where undefined."""
    support, predicted, hits = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    precision, recall = _divide(hits, predicted), _divide(hits, support)
    f1 = _divide(2 * hits, support + predicted)
    return [
        {
            "grade": grade,
            "precision": defined(precision[grade]),
            "recall": defined(recall[grade]),
            "f1": defined(f1[grade]),
            "support": int(support[grade]),
        }
        for grade in range(matrix.shape[0])
    ]


def _check_lengths(references: np.ndarray, predictions: np.ndarray) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")


def screening_metrics(
    matrix: np.ndarray, references: np.ndarray, probabilities: np.ndarray | None, cut: int
) -> dict[str, Any]:
    """Screening figures at "grade >= cut": rates from the decided grades, AUROC from `P(grade >= cut)`."""
    rates = screening_from_confusion(matrix, cut)
    positive = references >= cut
    area = None if probabilities is None else defined(auroc(positive, exceedance(probabilities, cut))[0])
    return {
        "cut": cut,
        **{name: defined(rates[name]) for name in SCREENING_STATISTICS},
        "auroc": area,
        "positives": int(positive.sum()),
        "negatives": int((~positive).sum()),
    }


def grading_metrics(
    references: Any,
    predictions: Any,
    probabilities: Any | None = None,
    *,
    num_labels: int = 5,
    referable_grade: int = 2,
    vision_threatening_grade: int = 3,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Every point estimate for one set of decided grades (and, optionally, their grade distributions).

    Returns plain Python: `n`, `accuracy`, `qwk`, `linear_kappa`, `mae`, `off_by_one_accuracy`, `f1_macro`,
    `f1_weighted`, `per_grade` (precision/recall/F1/support per grade), `confusion_matrix` (`[true][predicted]`),
    `referable` and `vision_threatening` (sensitivity, specificity, PPV, NPV, AUROC at `grade >= cut`), `ece`
    and `brier` (`None` without probabilities).
    """
    references = check_grades(references, "references", num_labels)
    predictions = check_grades(predictions, "predictions", num_labels)
    _check_lengths(references, predictions)
    cuts = {
        "referable": check_cut(referable_grade, "referable_grade", num_labels),
        "vision_threatening": check_cut(vision_threatening_grade, "vision_threatening_grade", num_labels),
    }
    probs = None if probabilities is None else check_probabilities(probabilities, len(references), num_labels)
    matrix = confusion_matrix(references, predictions, num_labels)
    grades = per_grade(matrix)
    occurring = [row for row in grades if row["f1"] is not None]  # in truth or prediction: scikit-learn's labels
    distance = np.abs(references - predictions)
    return {
        "n": len(references),
        "accuracy": defined(accuracy_from_confusion(matrix)),
        "qwk": defined(kappa_from_confusion(matrix, "quadratic")),
        "linear_kappa": defined(kappa_from_confusion(matrix, "linear")),
        "mae": float(distance.mean()),
        "off_by_one_accuracy": float((distance <= 1).mean()),
        "f1_macro": float(np.mean([row["f1"] for row in occurring])),
        "f1_weighted": float(sum(row["f1"] * row["support"] for row in occurring) / len(references)),
        "per_grade": grades,
        "confusion_matrix": matrix.tolist(),
        **{name: screening_metrics(matrix, references, probs, cut) for name, cut in cuts.items()},
        "ece": None if probs is None else expected_calibration_error(probs, references, n_bins),
        "brier": None if probs is None else brier_score(probs, references),
    }


def grade_set_metrics(bounds: Any, references: Any, num_labels: int = 5) -> dict[str, Any]:
    """Empirical coverage and mean size of grade sets given as inclusive `[lowest, highest]` grades `[N, 2]`,
    overall and per true grade (`None` for a grade without images)."""
    references = check_grades(references, "references", num_labels)
    bounds = np.asarray(bounds, dtype=np.int64).reshape(-1, 2)
    if len(bounds) != len(references):
        raise ValueError(f"{len(bounds)} grade sets for {len(references)} references.")
    covered = (bounds[:, 0] <= references) & (references <= bounds[:, 1])
    sizes = bounds[:, 1] - bounds[:, 0] + 1

    def summary(members: np.ndarray) -> dict[str, Any]:
        count = int(members.sum())
        return {
            "coverage": float(covered[members].mean()) if count else None,
            "mean_size": float(sizes[members].mean()) if count else None,
            "support": count,
        }

    per_grade = [{"grade": grade, **summary(references == grade)} for grade in range(num_labels)]
    return {**summary(np.ones(len(references), dtype=bool)), "per_grade": per_grade}


__all__ = [
    "ECE_BINS",
    "ReliabilityBins",
    "accuracy_from_confusion",
    "auroc",
    "brier_score",
    "check_grades",
    "check_probabilities",
    "confusion_matrix",
    "defined",
    "exceedance",
    "expected_calibration_error",
    "grade_set_metrics",
    "grading_metrics",
    "kappa_from_confusion",
    "per_grade",
    "quadratic_weighted_kappa",
    "reliability_bins",
    "roc_curve",
    "screening_from_confusion",
    "screening_metrics",
]
