"""Conformal grade sets: coverage on a synthetic task, set shape, call-time coverage, storage in the config,
and the pipeline's `grade_set`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import pipeline

from retinascan_hf import FeatureBank, RetinaScanConfig, RetinaScanModel
from retinascan_hf.metrics import grade_set_metrics
from retinascan_hf.modeling_retinascan import (
    DECISION_MODES,
    conformal_grade_sets,
    conformal_threshold,
    decide,
    nonconformity_scores,
    ordinal_grades,
    ordinal_probabilities,
    summarise_conformal_scores,
)
from retinascan_hf.training import fit_conformal
from retinascan_hf.training.evaluation import HeadOutputs, head_outputs

GRADE_MIX = [0.45, 0.12, 0.2, 0.1, 0.13]


def synthetic_task(n: int, seed: int) -> tuple[HeadOutputs, torch.Tensor]:
    """Head outputs of a noisy grader: a latent severity (grade + noise) drives the CORAL logits, the prototype
    logits and a 2-D embedding on an arc, so the three modes err where images are ambiguous, as real ones do."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(torch.tensor(GRADE_MIX), n, replacement=True, generator=generator)
    latent = labels.float() + 0.8 * torch.randn(n, generator=generator)
    ordinal_logits = 2.0 * (latent[:, None] - torch.tensor([0.5, 1.5, 2.5, 3.5]))
    angle = 0.4 * latent
    embeddings = torch.stack([angle.cos(), angle.sin(), 0.05 * torch.randn(n, generator=generator)], -1)
    outputs = HeadOutputs(
        ordinal_logits=ordinal_logits,
        prototype_logits=-((latent[:, None] - torch.arange(5.0)) ** 2) + 0.5 * torch.randn(n, 5, generator=generator),
        probs=ordinal_probabilities(ordinal_logits),
        embeddings=embeddings,
        predicted_grade=ordinal_grades(ordinal_logits, 1.0, torch.zeros(4)),
    )
    return outputs, labels


@pytest.fixture(scope="module")
def calibrated():
    """A config calibrated on 2,000 validation items, a bank of 3,000 training items, 4,000 test items."""
    bank_outputs, bank_labels = synthetic_task(3000, seed=1)
    bank = FeatureBank(bank_outputs.embeddings, bank_labels, config_hash=None)
    config = RetinaScanConfig(knn_k=10)
    validation, validation_labels = synthetic_task(2000, seed=2)
    result = fit_conformal(validation, validation_labels, config, bank)
    result.apply(config)
    test, test_labels = synthetic_task(4000, seed=3)
    return config, bank, test, test_labels, result


@pytest.mark.parametrize("coverage", [0.9, 0.8])
@pytest.mark.parametrize("mode", DECISION_MODES)
def test_coverage_is_within_three_points_of_the_target(calibrated, mode, coverage):
    config, bank, test, labels, _ = calibrated
    decision = decide(test, mode, config, bank, coverage=coverage)
    summary = grade_set_metrics(decision.grade_sets.numpy(), labels.numpy())
    assert abs(summary["coverage"] - coverage) <= 0.03, summary
    assert summary["mean_size"] < 5  # informative, not "every grade"


def test_sets_are_contiguous_hold_the_decided_grade_and_grow_with_coverage(calibrated):
    config, _, test, _, _ = calibrated
    sizes = []
    for coverage in (0.5, 0.8, 0.95):
        decision = decide(test, "ordinal", config, coverage=coverage)
        low, high = decision.grade_sets.unbind(-1)
        assert ((low <= decision.grades) & (decision.grades <= high)).all()
        sets = decision.grade_set_lists()
        assert all(grades == list(range(grades[0], grades[-1] + 1)) for grades in sets)
        sizes.append(float((high - low + 1).float().mean()))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    default = decide(test, "ordinal", config)
    assert torch.equal(default.grade_sets, decide(test, "ordinal", config, coverage=0.9).grade_sets)


def test_grade_set_of_a_true_grade_is_covered_exactly_when_its_score_is_below_the_threshold():
    generator = torch.Generator().manual_seed(0)
    scores = torch.softmax(3 * torch.randn(500, 5, generator=generator), -1)
    grades = scores.argmax(-1)
    labels = torch.randint(0, 5, (500,), generator=generator)
    nonconformity = nonconformity_scores(scores, grades, labels)
    for threshold in (0.3, 0.6, 0.9, 0.99):
        low, high = conformal_grade_sets(scores, grades, threshold).unbind(-1)
        covered = (low <= labels) & (labels <= high)
        assert torch.equal(covered | (labels == grades), (nonconformity <= threshold) | (labels == grades))
    assert (conformal_grade_sets(scores, grades, math.inf) == torch.tensor([0, 4])).all()


def test_a_unanimous_vote_gives_a_single_grade_not_every_grade():
    """Zero-probability grades add no mass: without the step penalty, a sure vote would tie with every larger set."""
    scores = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    assert conformal_grade_sets(scores, torch.tensor([2]), 1.0).tolist() == [[2, 2]]
    assert nonconformity_scores(scores, torch.tensor([2]), torch.tensor([4])).item() > 1.0


def test_stored_summary_is_exact_when_small_and_conservative_when_large():
    scores = torch.rand(5000, generator=torch.Generator().manual_seed(0))
    exact = sorted(scores.tolist())
    summary = summarise_conformal_scores(scores, max_size=1000)
    assert len(summary) == 1000 and summary == sorted(summary)
    for coverage in (0.5, 0.8, 0.9, 0.95):
        rank = math.ceil(5001 * coverage)
        approximate = conformal_threshold(summary, 5000, coverage)
        assert exact[rank - 1] <= approximate <= exact[min(rank + 4, 4999)]
        assert conformal_threshold(exact, 5000, coverage) == pytest.approx(exact[rank - 1])
    assert conformal_threshold(exact[:5], 5, 0.9) == math.inf  # too few images for 90%: every grade
    with pytest.raises(ValueError, match="coverage"):
        conformal_threshold(exact, 5000, 1.0)


def test_config_stores_the_calibration_and_rejects_bad_values(calibrated, tmp_path):
    config, *_, result = calibrated
    assert set(config.conformal_scores) == set(DECISION_MODES) and config.conformal_calibration_size == 2000
    assert all(len(scores) == 1000 for scores in config.conformal_scores.values())
    config.save_pretrained(tmp_path)
    reloaded = RetinaScanConfig.from_pretrained(tmp_path)
    assert reloaded.conformal_scores == config.conformal_scores and reloaded.conformal_coverage == 0.9
    assert result.to_dict()["calibration_size"] == 2000
    with pytest.raises(ValueError, match="conformal_coverage"):
        RetinaScanConfig(conformal_coverage=1.0)
    with pytest.raises(ValueError, match="conformal_calibration_size"):
        RetinaScanConfig(conformal_scores={"ordinal": [0.5]})
    with pytest.raises(ValueError, match="sorted"):
        RetinaScanConfig(conformal_scores={"ordinal": [0.9, 0.5]}, conformal_calibration_size=2)
    with pytest.raises(ValueError, match="sorted"):
        RetinaScanConfig(conformal_scores={"ordinal": [float("nan")]}, conformal_calibration_size=2)


def test_knn_sets_need_the_calibrated_k(calibrated):
    config, bank, test, *_ = calibrated
    assert decide(test, "knn", config, bank, k=config.knn_k).grade_sets is not None
    assert decide(test, "knn", config, bank, k=3).grade_sets is None  # the calibration does not cover k=3


@pytest.fixture(scope="module")
def calibrated_model_dir(tmp_path_factory, tiny_model_and_processor, bank_for, fundus_images):
    """The tiny test model with conformal calibration on its own ten images (enough to exercise the pipeline)."""
    model, processor = tiny_model_and_processor
    model = RetinaScanModel.from_pretrained(_saved(model, tmp_path_factory.mktemp("plain")))
    features = model.forward_features(processor(fundus_images)["pixel_values"]).detach()
    labels = torch.tensor([0, 1, 2, 3, 4] * 2)
    fit_conformal(head_outputs(model, features), labels, model.config, bank_for).apply(model.config)
    directory = tmp_path_factory.mktemp("calibrated")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    bank_for.save_pretrained(directory)
    return directory


def _saved(model, directory):
    model.save_pretrained(directory)
    return directory


def test_pipeline_returns_grade_sets_and_accepts_coverage(calibrated_model_dir, fundus_images):
    grader = pipeline("retinascan", model=str(calibrated_model_dir), trust_remote_code=True)
    results = grader(fundus_images[:4], mode="ordinal", batch_size=2)
    for result in results:
        grade_set = result["grade_set"]
        assert result["grade"] in grade_set and grade_set == list(range(grade_set[0], grade_set[-1] + 1))
    narrow = grader(fundus_images[:4], mode="ordinal", coverage=0.1)
    wide = grader(fundus_images[:4], mode="ordinal", coverage=0.99)
    assert all(len(a["grade_set"]) <= len(b["grade_set"]) for a, b in zip(narrow, wide, strict=True))
    assert all(result["grade_set"] == [0, 1, 2, 3, 4] for result in wide)  # 10 images cannot support 99%
    for bad in (0.0, 1.0, float("nan"), "0.9", True):
        with pytest.raises(ValueError, match="coverage"):
            grader(fundus_images[0], coverage=bad)
    flagged = grader([b"not an image"], coverage=0.5)[0]
    assert flagged["gradable"] is False and flagged["grade_set"] is None


def test_pipeline_without_calibration_says_so(model_dir, fundus_images):
    grader = pipeline("retinascan", model=str(model_dir), trust_remote_code=True)
    assert grader(fundus_images[0])["grade_set"] is None
    with pytest.raises(ValueError, match="no conformal calibration"):
        grader(fundus_images[0], coverage=0.9)


def test_calibrated_scores_are_what_the_config_reports(calibrated):
    config, *_ = calibrated
    validation, labels = synthetic_task(2000, seed=2)
    decision = decide(validation, "prototype", config)
    expected = summarise_conformal_scores(nonconformity_scores(decision.scores, decision.grades, labels))
    assert config.conformal_scores["prototype"] == expected
    assert np.isclose(expected[-1], max(nonconformity_scores(decision.scores, decision.grades, labels).tolist()))
