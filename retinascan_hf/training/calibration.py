"""Post-hoc calibration on validation logits: two temperatures and the CORAL decision thresholds.

- Ordinal temperature, fitted *after* the thresholds. The ordinal decision counts the leading CORAL tasks with
  `logit_k / T > threshold_k`, so scaling the thresholds tuned at `T = 1` by `1 / T` leaves every decision as it
  was; what the temperature changes is `probs` (`sigmoid((logit_k - tuned_k) / T)`), the distribution users read
  and the one whose negative log-likelihood it minimises. An earlier rule chose the temperature for the QWK of the
  probability-weighted grade: a decision criterion, not a calibration one. On the quickstart model it sharpened
  the logits 13-fold and "calibration" tripled the ordinal ECE (0.17 -> 0.53).
- Prototype temperature: chosen for the lowest expected calibration error of the prototype softmax.
- CORAL thresholds: coordinate search for the best validation QWK over *effective cut-points*, the values of
  the shared CORAL score at which the decision moves up one grade (see [`effective_cut_points`]). The cut-points
  are kept strictly increasing, so every grade keeps a non-empty score region: an unconstrained search once
  tuned the quickstart model to thresholds `[-1.106, -0.257, 1.705, 0.0]`, whose third cut-point lay above the
  fourth, so no image could ever be graded 3 (and P(grade 3) was exactly 0). Optionally every grade must also
  reach `min_grade_recall` on validation: the search first minimises the total shortfall, then maximises QWK.
  Starting from zero thresholds (the untuned decision, made ordered if its own cut-points were not), tuning
  never lowers that objective on validation.

Every temperature grid contains the identity (temperature 1), so calibration never makes its own criterion worse
on the data it is fitted on. Calibration data must hold at least two grades (QWK is undefined otherwise).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..configuration_retinascan import RetinaScanConfig
from ..metrics import expected_calibration_error, quadratic_weighted_kappa
from ..modeling_retinascan import ordinal_grades, ordinal_probabilities

TEMPERATURE_GRID: np.ndarray = np.unique(np.append(np.geomspace(0.05, 20.0, 61), 1.0))
THRESHOLD_CANDIDATES = 64
MAX_SEARCH_ROUNDS = 10
MIN_REGION_WIDTH = 1e-3  # narrowest grade region, as a share of the validation scores' range


def _qwk(labels: np.ndarray, grades: np.ndarray, num_labels: int) -> float:
    value = quadratic_weighted_kappa(labels, grades, num_labels)
    if value is None:
        raise ValueError("Calibration needs validation images of at least two grades (QWK is undefined otherwise).")
    return value


def _negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean())


def fit_ordinal_temperature(logits: torch.Tensor, labels: torch.Tensor, thresholds: list[float] | None = None) -> float:
    """Temperature with the lowest NLL of `probs = sigmoid((logit_k - thresholds_k) / T)`, CORAL logits `[N, K-1]`.

    `thresholds` are those tuned at `T = 1` (zeros when None); the caller stores `thresholds / T`, which keeps the
    decision and makes the model report exactly the distribution scored here.
    """
    logits, labels = logits.float().cpu(), labels.long().cpu()
    shifted = logits - torch.tensor(thresholds or [0.0] * logits.shape[-1], dtype=logits.dtype)

    def nll(temperature: float) -> float:
        return _negative_log_likelihood(ordinal_probabilities(shifted, temperature), labels)

    return float(min(TEMPERATURE_GRID, key=nll))


def fit_prototype_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature for the prototype logits `[N, K]` with the lowest ECE of their softmax."""
    logits, labels = logits.float().cpu(), labels.long().cpu().numpy()
    return float(min(TEMPERATURE_GRID, key=lambda t: expected_calibration_error(F.softmax(logits / t, -1), labels)))


def score_offsets(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """`offset_k = logit_0 / T - logit_k / T` (median over rows; `offset_0 = 0`).

    CORAL logits share one weight vector and differ only by their biases, so these are constants, and task `k`
    passes exactly when the shared score `s = logit_0 / T` exceeds `threshold_k + offset_k`.
    """
    scaled = logits.double().cpu().numpy() / temperature
    return np.median(scaled[:, :1] - scaled, axis=0)


def effective_cut_points(logits: torch.Tensor, temperature: float, thresholds: list[float]) -> np.ndarray:
    """Values of the shared score `s = logit_0 / T` at which the ordinal decision moves from grade `k` to `k + 1`.

    Grade `g` is reachable only if cut-point `g - 1` lies below cut-point `g`: the decision counts *leading*
    passes, so an image must exceed cut-points `0..g-1` and stay at or below cut-point `g`.
    """
    return np.asarray(thresholds, dtype=np.float64) + score_offsets(logits, temperature)


def unreachable_grades(logits: torch.Tensor, temperature: float, thresholds: list[float]) -> list[int]:
    """Grades that no score can produce under these thresholds (their cut-points are out of order)."""
    cuts = effective_cut_points(logits, temperature, thresholds)
    return [grade for grade in range(1, len(cuts)) if cuts[grade] <= cuts[grade - 1]]


def _ordered(cuts: np.ndarray, gap: float) -> np.ndarray:
    """The smallest upward adjustment of `cuts` that leaves every grade a region at least `gap` wide."""
    ordered = cuts.copy()
    for task in range(1, len(ordered)):
        ordered[task] = max(ordered[task], ordered[task - 1] + gap)
    return ordered


def recall_shortfall(labels: np.ndarray, grades: np.ndarray, num_labels: int, min_grade_recall: float) -> float:
    """Total recall missing to `min_grade_recall`, over the grades present in `labels`."""
    shortfall = 0.0
    for grade in range(num_labels):
        members = labels == grade
        if members.any():
            shortfall += max(0.0, min_grade_recall - float((grades[members] == grade).mean()))
    return shortfall


def tune_coral_thresholds(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, *, min_grade_recall: float = 0.0
) -> list[float]:
    """Thresholds on `logits / temperature` that maximise validation QWK of the ordinal decision, keeping every
    grade reachable (strictly increasing effective cut-points) and, first, meeting `min_grade_recall` per grade
    as far as possible."""
    if not 0.0 <= min_grade_recall <= 1.0:
        raise ValueError(f"min_grade_recall must lie in [0, 1], got {min_grade_recall}.")
    logits, labels = logits.float().cpu(), labels.long().cpu().numpy()
    num_labels = logits.shape[-1] + 1
    offsets = score_offsets(logits, temperature)
    score = logits[:, 0].double().numpy() / temperature
    gap = MIN_REGION_WIDTH * max(float(score.max() - score.min()), 1e-6)

    def objective(cuts: np.ndarray) -> tuple[float, float]:
        grades = ordinal_grades(logits, temperature, torch.from_numpy(cuts - offsets).float()).numpy()
        return -recall_shortfall(labels, grades, num_labels, min_grade_recall), _qwk(labels, grades, num_labels)

    candidates = np.unique(np.quantile(score, np.linspace(0.0, 1.0, THRESHOLD_CANDIDATES)))
    cuts = _ordered(offsets, gap)  # the untuned decision (zero thresholds)
    best = objective(cuts)
    for _ in range(MAX_SEARCH_ROUNDS):
        improved = False
        for task in range(len(cuts)):
            low = cuts[task - 1] + gap if task > 0 else -np.inf
            high = cuts[task + 1] - gap if task + 1 < len(cuts) else np.inf
            for cut in candidates[(candidates >= low) & (candidates <= high)]:
                trial = cuts.copy()
                trial[task] = cut
                value = objective(trial)
                if value[0] > best[0] + 1e-12 or (value[0] >= best[0] - 1e-12 and value[1] > best[1] + 1e-12):
                    best, cuts, improved = value, trial, True
        if not improved:
            break
    return [float(value) for value in cuts - offsets]


@dataclass
class CalibrationResult:
    """Fitted values and the validation metrics they were judged by, before and after."""

    ordinal_temperature: float
    prototype_calibration_temperature: float
    coral_thresholds: list[float]
    ordinal_qwk_before: float
    ordinal_qwk_after: float
    ordinal_nll_before: float
    ordinal_nll_after: float
    ordinal_ece_before: float
    ordinal_ece_after: float
    prototype_ece_before: float
    prototype_ece_after: float
    min_grade_recall: float
    unreachable_grades: list[int]

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
    min_grade_recall: float = 0.0,
) -> CalibrationResult:
    """Tune the thresholds (if `fit_thresholds`, subject to `min_grade_recall`) and then fit the temperatures (if
    `fit_temperatures`) on validation logits; switched-off parts keep the identity (1.0, zeros). Ordinal NLL and
    ECE are those of the distribution the model reports (`ordinal_probabilities` with the thresholds)."""
    ordinal_logits, prototype_logits = ordinal_logits.float().cpu(), prototype_logits.float().cpu()
    labels = labels.long().cpu()
    if len(labels.unique()) < 2:
        raise ValueError("Calibration needs validation images of at least two grades: QWK means nothing with one.")
    for name, logits in (("ordinal", ordinal_logits), ("prototype", prototype_logits)):
        bad = int((~torch.isfinite(logits)).any(dim=-1).sum())
        if bad:  # NaN would become NaN thresholds: a saved model that refuses to load, or worse, grades
            raise ValueError(
                f"Calibration got non-finite {name} logits for {bad} of {len(logits)} validation images: training "
                "diverged (try a lower learning rate) or the validation features are corrupt."
            )
    num_labels = prototype_logits.shape[-1]
    zeros = [0.0] * ordinal_logits.shape[-1]
    tuned = zeros
    if fit_thresholds:
        tuned = tune_coral_thresholds(ordinal_logits, labels, min_grade_recall=min_grade_recall)
    ordinal_temperature = fit_ordinal_temperature(ordinal_logits, labels, tuned) if fit_temperatures else 1.0
    prototype_temperature = fit_prototype_temperature(prototype_logits, labels) if fit_temperatures else 1.0
    thresholds = [value / ordinal_temperature for value in tuned]

    def ordinal_qwk(temperature: float, cut: list[float]) -> float:
        grades = ordinal_grades(ordinal_logits, temperature, torch.tensor(cut))
        return _qwk(labels.numpy(), grades.numpy(), num_labels)

    uncalibrated = ordinal_probabilities(ordinal_logits, 1.0, torch.tensor(zeros))
    calibrated = ordinal_probabilities(ordinal_logits, ordinal_temperature, torch.tensor(thresholds))

    def ece(probs: torch.Tensor) -> float:
        return expected_calibration_error(probs, labels.numpy())

    return CalibrationResult(
        ordinal_temperature=ordinal_temperature,
        prototype_calibration_temperature=prototype_temperature,
        coral_thresholds=thresholds,
        ordinal_qwk_before=ordinal_qwk(1.0, zeros),
        ordinal_qwk_after=ordinal_qwk(ordinal_temperature, thresholds),
        ordinal_nll_before=_negative_log_likelihood(uncalibrated, labels),
        ordinal_nll_after=_negative_log_likelihood(calibrated, labels),
        ordinal_ece_before=ece(uncalibrated),
        ordinal_ece_after=ece(calibrated),
        prototype_ece_before=ece(F.softmax(prototype_logits, -1)),
        prototype_ece_after=ece(F.softmax(prototype_logits / prototype_temperature, -1)),
        min_grade_recall=min_grade_recall,
        unreachable_grades=unreachable_grades(ordinal_logits, ordinal_temperature, thresholds),
    )


__all__ = [
    "TEMPERATURE_GRID",
    "CalibrationResult",
    "calibrate",
    "effective_cut_points",
    "fit_ordinal_temperature",
    "fit_prototype_temperature",
    "recall_shortfall",
    "score_offsets",
    "tune_coral_thresholds",
    "unreachable_grades",
]
