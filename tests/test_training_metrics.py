"""Calibration on logits with a known miscalibration; threshold tuning keeps every grade reachable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinascan_hf.metrics import expected_calibration_error, quadratic_weighted_kappa
from retinascan_hf.modeling_retinascan import ordinal_grades, ordinal_probabilities
from retinascan_hf.training import TrainingConfig
from retinascan_hf.training.calibration import (
    calibrate,
    effective_cut_points,
    fit_prototype_temperature,
    tune_coral_thresholds,
    unreachable_grades,
)


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


QUICKSTART_BIASES = torch.tensor([1.1131, 0.8264, 0.4286, 0.1551])  # CORAL biases of the quickstart model
QUICKSTART_TEMPERATURE = 0.549
QUICKSTART_THRESHOLDS = [-1.106, -0.257, 1.705, 0.0]  # what the unconstrained search tuned them to


def quickstart_like(seed: int, n_per_grade: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """CORAL logits (one shared score plus the quickstart biases) where grade 3 sits almost on grade 2: the
    situation in which a QWK-only search gave up grade 3 on the quickstart model."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(5).repeat_interleave(n_per_grade)
    centre = torch.tensor([-2.0, -1.0, 0.2, 0.5, 1.6])[labels]
    score = centre + 0.9 * torch.randn(len(labels), generator=generator)
    return score[:, None] + QUICKSTART_BIASES, labels


def reachable_on_a_score_sweep(temperature: float, thresholds: list[float]) -> set[int]:
    sweep = torch.linspace(-20, 20, 40001)[:, None] + QUICKSTART_BIASES
    return set(ordinal_grades(sweep, temperature, torch.tensor(thresholds)).tolist())


def test_the_quickstart_thresholds_made_grade_3_impossible():
    """The defect: with these thresholds no score yields grade 3, and P(grade 3) is exactly 0."""
    sweep = torch.linspace(-20, 20, 40001)[:, None] + QUICKSTART_BIASES
    assert reachable_on_a_score_sweep(QUICKSTART_TEMPERATURE, QUICKSTART_THRESHOLDS) == {0, 1, 2, 4}
    probs = ordinal_probabilities(sweep, QUICKSTART_TEMPERATURE, torch.tensor(QUICKSTART_THRESHOLDS))
    assert probs[:, 3].max() == 0.0
    assert unreachable_grades(sweep, QUICKSTART_TEMPERATURE, QUICKSTART_THRESHOLDS) == [3]


@pytest.mark.parametrize("seed", [2, 5, 8, 9])  # the unconstrained search left grade 1, 2, 3, 3 unreachable
def test_tuned_thresholds_keep_every_grade_reachable(seed):
    logits, labels = quickstart_like(seed)
    thresholds = tune_coral_thresholds(logits, labels, QUICKSTART_TEMPERATURE)
    cuts = effective_cut_points(logits, QUICKSTART_TEMPERATURE, thresholds)
    assert (np.diff(cuts) > 0).all() and unreachable_grades(logits, QUICKSTART_TEMPERATURE, thresholds) == []
    assert reachable_on_a_score_sweep(QUICKSTART_TEMPERATURE, thresholds) == {0, 1, 2, 3, 4}
    probs = ordinal_probabilities(logits, QUICKSTART_TEMPERATURE, torch.tensor(thresholds))
    assert (probs > 0).all()  # no grade has probability exactly 0 any more
    untuned = ordinal_grades(logits, QUICKSTART_TEMPERATURE, torch.zeros(4)).numpy()
    tuned = ordinal_grades(logits, QUICKSTART_TEMPERATURE, torch.tensor(thresholds)).numpy()
    assert quadratic_weighted_kappa(labels.numpy(), tuned) >= quadratic_weighted_kappa(labels.numpy(), untuned)


def test_minimum_grade_recall_is_met_when_it_can_be():
    logits, labels = quickstart_like(0)
    free = tune_coral_thresholds(logits, labels, QUICKSTART_TEMPERATURE)
    floored = tune_coral_thresholds(logits, labels, QUICKSTART_TEMPERATURE, min_grade_recall=0.5)

    def recalls(thresholds):
        grades = ordinal_grades(logits, QUICKSTART_TEMPERATURE, torch.tensor(thresholds))
        return [float((grades[labels == grade] == grade).float().mean()) for grade in range(5)]

    assert min(recalls(free)) < 0.5 <= min(recalls(floored))
    qwk = {
        name: quadratic_weighted_kappa(
            labels.numpy(), ordinal_grades(logits, QUICKSTART_TEMPERATURE, torch.tensor(t)).numpy()
        )
        for name, t in (("free", free), ("floored", floored))
    }
    assert qwk["floored"] <= qwk["free"]
    result = calibrate(logits, torch.randn(len(labels), 5), labels, min_grade_recall=0.5)
    assert result.min_grade_recall == 0.5 and result.unreachable_grades == []
    with pytest.raises(ValueError, match="min_grade_recall"):
        tune_coral_thresholds(logits, labels, min_grade_recall=1.5)
    with pytest.raises(ValueError, match="min_grade_recall"):
        TrainingConfig(min_grade_recall=-0.1)


def test_calibration_needs_two_grades():
    logits = torch.randn(10, 4)
    with pytest.raises(ValueError, match="at least two grades"):
        calibrate(logits, torch.randn(10, 5), torch.zeros(10, dtype=torch.long))


def test_ordinal_temperature_is_fitted_for_likelihood_after_thresholds_and_keeps_the_decision():
    """The defect: the temperature was chosen for the QWK of the expected grade, which sharpened the quickstart
    model's logits 13-fold and tripled its ordinal ECE. Now the thresholds are tuned first and the temperature
    minimises the NLL of the distribution the model reports, without moving a single decision."""
    logits, labels = ordinal_toy()
    logits = 4.0 * logits  # overconfident: a sigmoid of these is far steeper than the noise allows
    result = calibrate(logits, torch.randn(len(labels), 5), labels)
    tuned = tune_coral_thresholds(logits, labels)
    assert result.coral_thresholds == pytest.approx([value / result.ordinal_temperature for value in tuned])
    calibrated = ordinal_grades(logits, result.ordinal_temperature, torch.tensor(result.coral_thresholds))
    assert torch.equal(calibrated, ordinal_grades(logits, 1.0, torch.tensor(tuned)))
    assert result.ordinal_temperature > 1.0  # overconfident logits are softened, never sharpened
    at_identity = ordinal_probabilities(logits, 1.0, torch.tensor(tuned))
    reported = ordinal_probabilities(logits, result.ordinal_temperature, torch.tensor(result.coral_thresholds))
    nll = lambda probs: float(-probs[torch.arange(len(labels)), labels].log().mean())  # noqa: E731
    assert result.ordinal_nll_after == pytest.approx(nll(reported)) and nll(reported) < nll(at_identity)
    assert result.ordinal_ece_after < expected_calibration_error(at_identity.numpy(), labels.numpy())


@pytest.mark.parametrize("which", ["ordinal", "prototype"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_validation_logits_are_refused_not_turned_into_thresholds(which, value):
    logits, labels = ordinal_toy()
    prototype = torch.randn(len(labels), 5)
    (logits if which == "ordinal" else prototype)[7, 1] = value
    with pytest.raises(ValueError, match=rf"non-finite {which} logits for 1 of {len(labels)} validation images"):
        calibrate(logits, prototype, labels)
