"""Gradability: the image-quality check, the OOD reference and threshold, and what every result says (item 2).

Before, noise, a checkerboard, a text document, a gradient, a natural-looking photo, colour blobs and a plain
orange disc all came back graded (grade 2-3, `referable: True`); only uniform frames were flagged.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from hostile_support import RESULT_KEYS, build_model_folder
from PIL import Image, ImageFilter
from training_support import small_config

from retinascan_hf import FeatureBank, RetinaScanImageProcessor, RetinaScanPipeline, load_pipeline
from retinascan_hf.feature_bank import FeatureBankMismatchError, OODReference
from retinascan_hf.image_processing_retinascan import NoFundusFoundError, assess_fundus_quality
from retinascan_hf.synthetic import (
    HARD_NON_FUNDUS_KINDS,
    NON_FUNDUS_KINDS,
    non_fundus_set,
    render_non_fundus,
    save_synthetic_corpus,
    synthetic_fundus_set,
)
from retinascan_hf.tiny_clip import random_retinascan
from retinascan_hf.training import run_training
from retinascan_hf.training.ood import MIN_OOD_THRESHOLD, fit_ood_threshold


@pytest.fixture(scope="module")
def processor():
    return RetinaScanImageProcessor(size=32)


def problems_of(processor, image) -> list[str]:
    try:
        return processor.prepare(image).problems
    except NoFundusFoundError as error:
        return [str(error)]


# --- the image-quality check ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [48, 96, 300])
def test_synthetic_fundus_images_pass_the_quality_check(processor, size):
    for image in synthetic_fundus_set([0, 1, 2, 3, 4] * 2, size=size, seed=size):
        assert processor.prepare(image).problems == []


@pytest.mark.parametrize("kind", NON_FUNDUS_KINDS)
def test_each_listed_non_fundus_kind_fails_the_quality_check(processor, kind):
    rng = np.random.default_rng(7)
    flagged = [bool(problems_of(processor, render_non_fundus(kind, rng))) for _ in range(6)]
    assert sum(flagged) >= 5, f"{kind}: {flagged}"


def test_quality_problems_say_what_is_wrong(processor, fundus_images):
    fundus = fundus_images[3].resize((192, 192))
    assert processor.prepare(fundus.filter(ImageFilter.GaussianBlur(6))).problems[0].startswith("out of focus")
    noise = processor.prepare(render_non_fundus("noise", np.random.default_rng(0), size=(160, 120))).problems[0]
    assert noise.startswith(("no round fundus field of view", "no dark surround"))
    inside = np.asarray(fundus).max(axis=-1, keepdims=True) > 20
    bright = Image.fromarray(np.where(inside, 255, 0).repeat(3, axis=-1).astype(np.uint8))
    assert any(problem.startswith("over-exposed") for problem in processor.prepare(bright).problems)


def test_quality_measurements_of_a_known_disc():
    array = np.zeros((200, 300, 3), np.uint8)
    yy, xx = np.mgrid[0:200, 0:300]
    array[(xx - 150) ** 2 + (yy - 100) ** 2 <= 80**2] = (200, 90, 40)
    quality = assess_fundus_quality(Image.fromarray(array))
    assert quality.field_of_view_found and quality.field_of_view_radius == pytest.approx(0.4, abs=0.03)
    assert quality.surround_brightness < 0.01 and quality.field_of_view_coverage > 0.99
    assert quality.focus < 1e-3  # flat: nothing in focus


def test_the_quality_check_can_be_switched_off(fundus_images):
    flat = render_non_fundus("orange_disc", np.random.default_rng(0), size=(96, 96))
    assert RetinaScanImageProcessor(size=32, do_quality_check=False).prepare(flat).quality is None
    assert RetinaScanImageProcessor(size=32).prepare(flat).problems


# --- the OOD reference ------------------------------------------------------------------------------------------


def test_ood_reference_scale_is_the_median_leave_one_out_distance():
    # Unit vectors at 0, 10, 20 and 90 degrees in a plane; k=1 neighbour distances are 1-cos(10 deg) for the
    # first three and 1-cos(70 deg) for the last: the median of the four is 1-cos(10 deg).
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 20.0, 90.0]))
    features = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert OODReference(features).k == 3  # min(OOD_NEIGHBORS, rows - 1)
    single = OODReference(features[:2])
    assert single.k == 1 and single.scale == pytest.approx(1 - np.cos(np.deg2rad(10)), rel=1e-4)
    query = torch.tensor([[np.cos(np.deg2rad(5.0)), np.sin(np.deg2rad(5.0))]], dtype=torch.float32)
    assert single.scores(query).item() == pytest.approx(
        (1 - np.cos(np.deg2rad(5))) / (1 - np.cos(np.deg2rad(10))), rel=1e-3
    )


@pytest.mark.parametrize("rows", [50, 3000])  # below and above the size searched through int8 codes
def test_ood_scores_equal_a_dense_float32_scan_and_nan_stays_nan(rows):
    generator = torch.Generator().manual_seed(rows)
    reference = OODReference(torch.randn(rows, 32, generator=generator))
    assert (len(reference.features) >= reference.index.prefilter_min_rows) == (rows == 3000)
    queries = torch.cat([torch.randn(20, 32, generator=generator), reference.features[:3] * 5.0])
    queries[4, 7] = float("nan")
    dense = 1.0 - (torch.nn.functional.normalize(queries, dim=-1) @ reference.features.T).topk(reference.k).values
    expected = dense.mean(dim=-1) / reference.scale
    scores = reference.scores(queries)
    assert torch.isnan(scores[4]) and torch.isfinite(scores[torch.arange(len(queries)) != 4]).all()
    assert torch.allclose(scores[:4], expected[:4], atol=1e-5) and torch.allclose(scores[5:], expected[5:], atol=1e-5)


def test_ood_reference_samples_at_most_its_row_limit():
    features = torch.randn(50, 8)
    assert len(OODReference.sample(features, max_rows=20).features) == 20
    assert torch.equal(OODReference.sample(features, max_rows=20).features, OODReference.sample(features, 20).features)
    assert OODReference.sample(features[:1]) is None


def test_ood_reference_round_trips_with_the_bank(tmp_path):
    reference = OODReference(torch.randn(12, 8))
    bank = FeatureBank(torch.randn(12, 8), torch.arange(12) % 5, ood_reference=reference)
    loaded = FeatureBank.from_pretrained(bank.save_pretrained(tmp_path).parent)
    assert loaded.ood_reference.k == reference.k and loaded.ood_reference.scale == reference.scale
    assert torch.allclose(loaded.ood_reference.features, reference.features, atol=1e-6)
    with pytest.raises(FeatureBankMismatchError, match="OOD reference holds 8-d"):
        FeatureBank(torch.randn(12, 4), torch.arange(12) % 5, ood_reference=reference).check_compatible(4)


def test_the_threshold_is_a_validation_quantile_never_below_one():
    generator = torch.Generator().manual_seed(0)
    bank = FeatureBank(torch.randn(40, 8), torch.arange(40) % 5, ood_reference=OODReference(torch.randn(40, 8)))
    validation = torch.randn(200, 8, generator=generator)
    calibration = fit_ood_threshold(bank, validation, quantile=0.9)
    scores = bank.ood_scores(validation)
    assert calibration.threshold == pytest.approx(max(float(torch.quantile(scores, 0.9)), MIN_OOD_THRESHOLD))
    assert calibration.validation_flagged_fraction == pytest.approx(
        float((scores > calibration.threshold).float().mean())
    )
    assert fit_ood_threshold(FeatureBank(torch.randn(4, 8), [0, 1, 2, 3]), validation, 0.9) is None


# --- what the pipeline answers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grader(tmp_path_factory, fundus_images):
    return load_pipeline(build_model_folder(tmp_path_factory.mktemp("model"), fundus_images))


@pytest.mark.parametrize("mode", ["knn", "ordinal", "prototype"])
def test_every_result_carries_the_same_keys_in_every_mode(grader, fundus_images, mode, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG garbage")
    inputs = [
        fundus_images[0],
        render_non_fundus("text_document", np.random.default_rng(0), size=(160, 120)),
        str(corrupt),
    ]
    graded, low_quality, invalid = grader(inputs, mode=mode)
    for result in (graded, low_quality, invalid):
        assert result.keys() == RESULT_KEYS and result["mode"] == mode
    assert graded["gradable"] and graded["reason"] is None and graded["error_type"] is None
    assert isinstance(graded["ood_score"], float) and graded["ood_score"] < grader.model.config.ood_threshold
    assert low_quality["error_type"] == "LowQuality" and "not gradable" in low_quality["reason"]
    assert invalid["error_type"] == "InvalidImageError" and "corrupt.png" in invalid["reason"]
    for result in (low_quality, invalid):
        assert (result["grade"], result["label"], result["scores"], result["referable"], result["grade_set"]) == (
            None,
        ) * 5


@pytest.mark.parametrize("mode", ["knn", "ordinal", "prototype"])
def test_an_image_far_from_the_training_images_is_not_graded_in_any_mode(grader, fundus_images, mode):
    """A disc-shaped picture passes the quality check; the embedding check stops it. Here the bank holds only
    grade images of one seed, so a lowered threshold makes the point without a trained model."""
    config = grader.model.config
    original = config.ood_threshold
    try:
        config.ood_threshold = 1e-6
        result = grader(fundus_images[0].rotate(90), mode=mode)
    finally:
        config.ood_threshold = original
    assert result["gradable"] is False and result["error_type"] == "OutOfDistribution"
    assert result["ood_score"] > 1e-6 and "ood_score" in result["reason"] and result["grade"] is None


def test_without_a_bank_only_the_quality_check_applies(fundus_images):
    model, processor = random_retinascan(seed=0)
    model.config.ood_threshold = 1e-6  # would flag everything, but there is no reference to measure against
    grader = RetinaScanPipeline(model=model, image_processor=processor, feature_bank=False)
    graded, flat = grader([fundus_images[2], render_non_fundus("orange_disc", np.random.default_rng(0), size=(96, 96))])
    assert graded["gradable"] and graded["ood_score"] is None
    assert flat["error_type"] == "LowQuality"


def test_training_calibrates_the_threshold_and_stores_the_reference(tmp_path):
    save_synthetic_corpus(tmp_path / "corpus", {"train": (6,) * 5, "validation": (4,) * 5}, size=32)
    config = small_config(tmp_path / "run", data=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"))
    result = run_training(config)
    ood = result.metrics["ood"]
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["ood_threshold"] == ood["threshold"] >= MIN_OOD_THRESHOLD and ood["quantile"] == 0.99
    bank = FeatureBank.from_pretrained(result.model_dir)
    assert bank.ood_reference is not None and len(bank.ood_reference.features) == 30
    assert 0.0 <= ood["flagged_fraction"]["validation"] <= 0.1


# --- the claim, on real photos --------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_the_quality_check_flags_at_most_5_percent_of_real_photos(real_data_dir):
    """Every 9th EyePACS photo (301) and the 10 camera originals; the whole set is in benchmarks/gradability.json."""
    processor = RetinaScanImageProcessor()
    photos = sorted((real_data_dir / "eyepacs-256" / "train").glob("*.jpeg"))[::9]
    photos += sorted((real_data_dir / "eyepacs-originals" / "train").glob("*.jpeg"))
    flagged = [path.name for path in photos if processor.prepare(path).problems]
    assert len(flagged) <= 0.05 * len(photos), flagged


@pytest.mark.slow
@pytest.mark.real_data
def test_quickstart_model_flags_non_fundus_pictures_and_spares_real_photos(tmp_path, real_data_dir):
    """The issue's claim on the quickstart model: >= 95% of non-fundus pictures flagged (the listed kinds and the
    disc-shaped ones), while the quality check flags <= 5% of real photos. (The quickstart model's embedding
    check rightly calls real photos out of distribution: it only ever saw synthetic ones; the real-photo rate
    of both checks together is measured with an EyePACS-trained model in benchmarks/gradability.py.)"""
    from retinascan_hf.training.quickstart import quickstart

    trained = quickstart(tmp_path / "quickstart", progress=False, log=lambda _: None)
    grader = load_pipeline(trained.model_dir)
    for kinds in (NON_FUNDUS_KINDS, HARD_NON_FUNDUS_KINDS):
        pictures = [image for _, image in non_fundus_set(8, kinds, seed=3)]
        flagged = [not result["gradable"] for result in grader(pictures, batch_size=16)]
        assert sum(flagged) >= 0.95 * len(flagged), kinds
    photos = sorted((real_data_dir / "eyepacs-256" / "train").glob("*.jpeg"))
    photos = random.Random(0).sample(photos, 300) + sorted((real_data_dir / "eyepacs-originals" / "train").glob("*"))
    processor = grader.image_processor
    flagged = [path.name for path in photos if processor.prepare(path).problems]
    assert len(flagged) <= 0.05 * len(photos), flagged
