"""Grading metrics (numpy) and the `evaluate` metric that wraps them.

`compute_grading_metrics` is the single implementation; `evaluate.load(retinascan_hf.metric_path())` loads
the same computation as an `evaluate.Metric`, offline, from the folder shipped in this package.
"""

from pathlib import Path

from .grading import (
    ECE_BINS,
    ReliabilityBins,
    expected_calibration_error,
    grade_set_metrics,
    grading_metrics,
    quadratic_weighted_kappa,
    reliability_bins,
)
from .summary import compute_grading_metrics

METRIC_NAME = "retinascan_grading"


def metric_path() -> str:
    """The folder of the `evaluate` metric script: `evaluate.load(metric_path())` works without the Hub."""
    return str(Path(__file__).parent / METRIC_NAME)


__all__ = [
    "ECE_BINS",
    "METRIC_NAME",
    "ReliabilityBins",
    "compute_grading_metrics",
    "expected_calibration_error",
    "grade_set_metrics",
    "grading_metrics",
    "metric_path",
    "quadratic_weighted_kappa",
    "reliability_bins",
]
