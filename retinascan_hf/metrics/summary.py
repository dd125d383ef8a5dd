"""`compute_grading_metrics`: point estimates plus bootstrap intervals, the entry point everyone calls.

The `evaluate` metric, `retinascan evaluate` and training all go through this function (training with
`n_bootstrap=0`, since it only compares epochs), so a number means the same thing wherever it is printed.
"""

from __future__ import annotations

from typing import Any

from .grading import ECE_BINS, check_grades, check_probabilities, grading_metrics
from .intervals import bootstrap_intervals

DEFAULT_RESAMPLES = 1000


def compute_grading_metrics(
    references: Any,
    predictions: Any,
    probabilities: Any | None = None,
    patient_ids: Any | None = None,
    *,
    num_labels: int = 5,
    referable_grade: int = 2,
    vision_threatening_grade: int = 3,
    n_bins: int = ECE_BINS,
    n_bootstrap: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of [`grading_metrics`], plus `confidence_intervals` (see [`bootstrap_intervals`]) unless
    `n_bootstrap` is 0.

    Args:
        references, predictions: true and decided grades, `N` integers in `[0, num_labels)`.
        probabilities: `[N, num_labels]` grade distributions (for AUROC, ECE and Brier score).
        patient_ids: `N` ids; when given, the bootstrap resamples patients, not images.
        referable_grade, vision_threatening_grade: the screening cut-offs (ICDR: 2 and 3).
        n_bins: confidence bins of the ECE.
        n_bootstrap, confidence, seed: number of resamples, interval level, and the seed that fixes them.
    """
    metrics = grading_metrics(
        references,
        predictions,
        probabilities,
        num_labels=num_labels,
        referable_grade=referable_grade,
        vision_threatening_grade=vision_threatening_grade,
        n_bins=n_bins,
    )
    if n_bootstrap:
        references = check_grades(references, "references", num_labels)
        probs = None if probabilities is None else check_probabilities(probabilities, len(references), num_labels)
        metrics["confidence_intervals"] = bootstrap_intervals(
            references,
            check_grades(predictions, "predictions", num_labels),
            probs,
            cuts={"referable": referable_grade, "vision_threatening": vision_threatening_grade},
            num_labels=num_labels,
            patient_ids=patient_ids,
            n_resamples=n_bootstrap,
            confidence=confidence,
            seed=seed,
        )
    return metrics


__all__ = ["DEFAULT_RESAMPLES", "compute_grading_metrics"]
