"""Percentile-bootstrap confidence intervals for QWK, accuracy and the screening figures.

Resampling is by patient when patient ids are given: both eyes (and repeat visits) of one person are
correlated, so resampling images would pretend to more independent evidence than a test set holds and
give intervals that are too narrow. A resample is a vector of multiplicities per image; the statistics of
many resamples at once are the weighted versions of the point estimates in [`grading`], computed with the
same functions, so an interval can never disagree with its estimate's definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .grading import (
    SCREENING_STATISTICS,
    accuracy_from_confusion,
    auroc,
    confusion_matrix,
    exceedance,
    kappa_from_confusion,
    screening_from_confusion,
)

MIN_DEFINED_FRACTION = 0.5  # below this share of resamples where a statistic exists, its interval is None
MAX_WEIGHTS = 20_000_000  # resample multiplicities held at once (160 MB of float64), whatever the test set size


def _resample_weights(groups: np.ndarray, n_groups: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`[n_resamples, n_images]` multiplicities: each resample draws `n_groups` groups with replacement."""
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)
    return counts[:, groups].astype(np.float64)


def _statistics(
    references: np.ndarray,
    predictions: np.ndarray,
    probabilities: np.ndarray | None,
    cuts: dict[str, int],
    num_labels: int,
    weights: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every bootstrapped statistic for each row of `weights` (NaN where undefined in that resample)."""
    matrices = confusion_matrix(references, predictions, num_labels, weights)
    values = {"accuracy": accuracy_from_confusion(matrices), "qwk": kappa_from_confusion(matrices, "quadratic")}
    for name, cut in cuts.items():
        rates = screening_from_confusion(matrices, cut)
        values.update({f"{name}.{statistic}": rates[statistic] for statistic in SCREENING_STATISTICS})
        if probabilities is not None:
            values[f"{name}.auroc"] = auroc(references >= cut, exceedance(probabilities, cut), weights)
    return values


def bootstrap_intervals(
    references: np.ndarray,
    predictions: np.ndarray,
    probabilities: np.ndarray | None,
    *,
    cuts: dict[str, int],
    num_labels: int,
    patient_ids: Any | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """`[low, high]` per statistic (`None` where it is undefined in too many resamples), and how they were made.

    Inputs are the validated arrays of [`grading_metrics`]. The same `seed` always gives the same intervals.
    Result: `{"accuracy": [lo, hi], "qwk": [...], "referable": {"sensitivity": [...], ...}, ...,
    "resamples": n, "unit": "patient" | "image", "confidence": c, "seed": seed}`.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    if patient_ids is None:
        groups, n_groups = np.arange(len(references)), len(references)
    else:
        patient_ids = np.asarray(patient_ids)
        if patient_ids.shape != references.shape:
            raise ValueError(f"patient_ids has {patient_ids.size} entries for {len(references)} references.")
        _, groups = np.unique(patient_ids.astype(str), return_inverse=True)
        n_groups = int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, MAX_WEIGHTS // len(references)))
    chunks: list[dict[str, np.ndarray]] = []
    for start in range(0, n_resamples, chunk):
        weights = _resample_weights(groups, n_groups, min(chunk, n_resamples - start), rng)
        chunks.append(_statistics(references, predictions, probabilities, cuts, num_labels, weights))
    tail = 100 * (1 - confidence) / 2
    result: dict[str, Any] = {}
    for name in chunks[0]:
        values = np.concatenate([chunk[name] for chunk in chunks])
        values = values[~np.isnan(values)]
        interval = None
        if len(values) >= MIN_DEFINED_FRACTION * n_resamples:
            interval = [float(bound) for bound in np.percentile(values, [tail, 100 - tail])]
        group, _, statistic = name.rpartition(".")
        (result.setdefault(group, {}) if group else result)[statistic] = interval
    return {
        **result,
        "resamples": n_resamples,
        "unit": "image" if patient_ids is None else "patient",
        "confidence": confidence,
        "seed": seed,
    }


__all__ = ["bootstrap_intervals"]
