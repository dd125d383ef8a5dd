"""Split-conformal calibration of the grade sets, on the validation split, after the other calibration.

For each decision mode, the nonconformity score of every validation image's true grade (see
`modeling_retinascan.nonconformity_scores`) is computed under the final, calibrated decision, and the sorted
scores go into the model config. Validation images played no part in fitting the heads or the bank, so they
are exchangeable with future images, which is all split conformal prediction needs for its guarantee: a set
built at coverage `c` holds the true grade with probability at least `c` (and at most `c + 1/(n + 1)` when
scores do not tie). It must run last: any later change to temperatures, thresholds, weights or bank would
change the scores it measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..configuration_retinascan import RetinaScanConfig
from ..feature_bank import FeatureBank
from ..modeling_retinascan import DECISION_MODES, decide, nonconformity_scores, summarise_conformal_scores
from .evaluation import HeadOutputs


@dataclass
class ConformalResult:
    """Per-mode sorted validation scores (what the config stores) and the number of images they summarise."""

    scores: dict[str, list[float]]
    calibration_size: int

    def apply(self, config: RetinaScanConfig) -> None:
        """Write the calibration into the model config (what `save_pretrained` then stores)."""
        config.conformal_scores = {mode: list(values) for mode, values in self.scores.items()}
        config.conformal_calibration_size = self.calibration_size

    def to_dict(self) -> dict:
        return asdict(self)


def fit_conformal(
    outputs: HeadOutputs, labels: torch.Tensor, config: RetinaScanConfig, bank: FeatureBank | None = None
) -> ConformalResult:
    """Scores of every decision mode (kNN only with a `bank`) on validation head `outputs` with true `labels`."""
    if len(labels) == 0:
        raise ValueError("Conformal calibration needs at least one validation image.")
    modes = [mode for mode in DECISION_MODES if mode != "knn" or bank is not None]
    scores = {}
    for mode in modes:
        decision = decide(outputs, mode, config, bank)
        scores[mode] = summarise_conformal_scores(nonconformity_scores(decision.scores, decision.grades, labels))
    return ConformalResult(scores, len(labels))


__all__ = ["ConformalResult", "fit_conformal"]
