"""Post-hoc calibration on validation logits: two temperatures and the CORAL decision thresholds.

- Ordinal temperature. The ordinal *decision* counts the leading CORAL tasks whose scaled logit passes its
  threshold, so with zero thresholds it does not depend on the temperature at all; what the temperature does
  change is `probs`, the distribution users read. It is therefore chosen for the QWK of the probability-
  weighted grade `round(sum_k k * p_k)` (the continuous severity score), ties broken by the lower negative
  log-likelihood, which makes the choice a proper calibration wherever QWK is flat.
- Prototype temperature: chosen for the lowest expected calibration error of the prototype softmax.
- CORAL thresholds: coordinate search on the temperature-scaled logits, one task at a time over candidate
  cut points (quantiles of that task's logits), keeping a change only if validation QWK strictly rises.
  Starting from zero thresholds (the untuned decision), tuned thresholds can never score lower on validation.

Every search grid contains the identity (temperature 1, threshold 0), so calibration never makes its own
criterion worse on the data it is fitted on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..configuration_retinascan import RetinaScanConfig
from ..modeling_retinascan import ordinal_grades, ordinal_probabilities
from .metrics import expected_calibration_error, quadratic_weighted_kappa

TEMPERATURE_GRID: np.ndarray = np.unique(np.append(np.geomspace(0.05, 20.0, 61), 1.0))
THRESHOLD_CANDIDATES = 64
MAX_SEARCH_ROUNDS = 10


def expected_grades(probs: torch.Tensor) -> np.ndarray:
    """`round(sum_k k * p_k)` per row: the grade of the probability-weighted severity."""
    grades = torch.arange(probs.shape[-1], dtype=probs.dtype)
    return torch.round((probs * grades).sum(dim=-1)).long().numpy()


def _negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean())


def fit_ordinal_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature for the CORAL logits `[N, K-1]`: best expected-grade QWK, then lowest NLL."""
    logits, labels = logits.float().cpu(), labels.long().cpu()
    num_labels = logits.shape[-1] + 1

    def score(temperature: float) -> tuple[float, float]:
        probs = ordinal_probabilities(logits, temperature)
        qwk = quadratic_weighted_kappa(labels.numpy(), expected_grades(probs), num_labels)
        return qwk, -_negative_log_likelihood(probs, labels)

    return float(max(TEMPERATURE_GRID, key=score))


def fit_prototype_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature for the prototype logits `[N, K]` with the lowest ECE of their softmax."""
    logits, labels = logits.float().cpu(), labels.long().cpu().numpy()
    return float(min(TEMPERATURE_GRID, key=lambda t: expected_calibration_error(F.softmax(logits / t, -1), labels)))


def tune_coral_thresholds(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> list[float]:
    """Thresholds on `logits / temperature` that maximise validation QWK of the ordinal decision."""
    logits, labels = logits.float().cpu(), labels.long().cpu().numpy()
    num_labels = logits.shape[-1] + 1
    scaled = logits / temperature

    def qwk(thresholds: np.ndarray) -> float:
        grades = ordinal_grades(logits, temperature, torch.from_numpy(thresholds).float())
        return quadratic_weighted_kappa(labels, grades.numpy(), num_labels)

    quantiles = np.linspace(0.0, 1.0, THRESHOLD_CANDIDATES)
    candidates = [np.unique(np.quantile(scaled[:, task].numpy(), quantiles)) for task in range(scaled.shape[1])]
    thresholds = np.zeros(scaled.shape[1])
    best = qwk(thresholds)
    for _ in range(MAX_SEARCH_ROUNDS):
        improved = False
        for task, cut_points in enumerate(candidates):
            for cut in cut_points:
                trial = thresholds.copy()
                trial[task] = cut
                value = qwk(trial)
                if value > best + 1e-12:
                    best, thresholds, improved = value, trial, True
        if not improved:
            break
    return [float(value) for value in thresholds]


@dataclass
class CalibrationResult:
    """Fitted values and the validation metrics they were judged by, before and after."""

    ordinal_temperature: float
    prototype_calibration_temperature: float
    coral_thresholds: list[float]
    ordinal_qwk_before: float
    ordinal_qwk_after: float
    expected_grade_qwk_before: float
    expected_grade_qwk_after: float
    ordinal_nll_before: float
    ordinal_nll_after: float
    prototype_ece_before: float
    prototype_ece_after: float

    def apply(self, config: RetinaScanConfig) -> None:
        """Write the fitted values into the model config (what `save_pretrained` then stores)."""
        config.ordinal_temperature = self.ordinal_temperature
        config.prototype_calibration_temperature = self.prototype_calibration_temperature
        config.coral_thresholds = list(self.coral_thresholds)

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(
    ordinal_logits: torch.Tensor,
    prototype_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    fit_temperatures: bool = True,
    fit_thresholds: bool = True,
) -> CalibrationResult:
    """Fit the temperatures (if `fit_temperatures`) and then the thresholds (if `fit_thresholds`) on
    validation logits; switched-off parts keep the identity (1.0, zeros)."""
    ordinal_logits, prototype_logits = ordinal_logits.float().cpu(), prototype_logits.float().cpu()
    labels = labels.long().cpu()
    num_labels = prototype_logits.shape[-1]
    ordinal_temperature = fit_ordinal_temperature(ordinal_logits, labels) if fit_temperatures else 1.0
    prototype_temperature = fit_prototype_temperature(prototype_logits, labels) if fit_temperatures else 1.0
    zeros = [0.0] * ordinal_logits.shape[-1]
    thresholds = tune_coral_thresholds(ordinal_logits, labels, ordinal_temperature) if fit_thresholds else zeros

    def ordinal_qwk(temperature: float, cut: list[float]) -> float:
        grades = ordinal_grades(ordinal_logits, temperature, torch.tensor(cut))
        return quadratic_weighted_kappa(labels.numpy(), grades.numpy(), num_labels)

    def expected_qwk(temperature: float) -> float:
        probs = ordinal_probabilities(ordinal_logits, temperature)
        return quadratic_weighted_kappa(labels.numpy(), expected_grades(probs), num_labels)

    def nll(temperature: float) -> float:
        return _negative_log_likelihood(ordinal_probabilities(ordinal_logits, temperature), labels)

    def ece(temperature: float) -> float:
        return expected_calibration_error(F.softmax(prototype_logits / temperature, -1), labels.numpy())

    return CalibrationResult(
        ordinal_temperature=ordinal_temperature,
        prototype_calibration_temperature=prototype_temperature,
        coral_thresholds=thresholds,
        ordinal_qwk_before=ordinal_qwk(1.0, zeros),
        ordinal_qwk_after=ordinal_qwk(ordinal_temperature, thresholds),
        expected_grade_qwk_before=expected_qwk(1.0),
        expected_grade_qwk_after=expected_qwk(ordinal_temperature),
        ordinal_nll_before=nll(1.0),
        ordinal_nll_after=nll(ordinal_temperature),
        prototype_ece_before=ece(1.0),
        prototype_ece_after=ece(prototype_temperature),
    )


__all__ = [
    "TEMPERATURE_GRID",
    "CalibrationResult",
    "calibrate",
    "expected_grades",
    "fit_ordinal_temperature",
    "fit_prototype_temperature",
    "tune_coral_thresholds",
]
