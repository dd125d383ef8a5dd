"""Grad-CAM: the map follows a lesion wherever it is painted; the model is left exactly as it was found.

The localisation tests use a tiny model trained (in seconds) to answer grade 1 when one bright blob is present
(`retinascan_hf.synthetic_lesion`), so where its evidence lies is known: on the blob.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinascan_hf import FeatureBank, RetinaScanPipeline
from retinascan_hf.gradcam_retinascan import colorize, grad_cam, overlay_heatmap
from retinascan_hf.synthetic import render_fundus
from retinascan_hf.synthetic_lesion import BLOB_COLOUR, paint_blob, random_blob_centre, train_blob_detector
from retinascan_hf.tiny_clip import random_retinascan

SIZE = 64
# Blob centres as fractions of the raw image: the four quadrants and the centre (clear of the optic disc).
POSITIONS = [(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7), (0.5, 0.5)]


@pytest.fixture(scope="module")
def detector():
    trained = train_blob_detector(image_size=SIZE, seed=0)
    assert trained.accuracy > 0.85  # otherwise there is nothing to explain
    return trained


@pytest.fixture(scope="module")
def blob_grader(detector):
    """The detector behind a pipeline, with a small bank of blob / no-blob images so kNN can be explained."""
    rng = np.random.default_rng(7)
    images, grades = [], []
    for index in range(24):
        image = render_fundus(0, size=SIZE, rng=rng)
        if index % 2:
            image = paint_blob(image, random_blob_centre(SIZE, rng), SIZE * 0.055)
        images.append(image)
        grades.append(index % 2)
    with torch.no_grad():
        embeddings = detector.model(**detector.processor(images)).embeddings
    bank = FeatureBank(embeddings, grades, num_labels=2, config_hash=detector.model.config.embedding_hash())
    return RetinaScanPipeline(model=detector.model, image_processor=detector.processor, feature_bank=bank)


def blob_centre_in_model_image(grader, image) -> tuple[float, float]:
    """Where the blob is in the picture the model saw (the fundus crop moves it): its pixels' centroid."""
    picture = np.asarray(grader.image_processor.to_model_image(image), np.int32)
    rows, cols = np.nonzero(np.abs(picture - np.asarray(BLOB_COLOUR)).max(-1) < 30)
    assert rows.size > 10
    return float(cols.mean()), float(rows.mean())


@pytest.mark.parametrize("mode", ["ordinal", "prototype", "knn"])
def test_heat_follows_the_blob_wherever_it_is_painted(blob_grader, mode):
    background = render_fundus(0, size=SIZE, rng=np.random.default_rng(99))
    patch = blob_grader.model.config.backbone_config.vision_config.patch_size
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    centroids = []
    for fx, fy in POSITIONS:
        image = paint_blob(background, (fx * SIZE, fy * SIZE), SIZE * 0.055)
        if mode == "knn":  # a 24-image bank may outvote a blob; the explained vote for grade 1 is tested here
            result = blob_grader(image, mode=mode, return_heatmap=True, heatmap_grade=1)
        else:  # the decided grade's map
            result = blob_grader(image, mode=mode, return_heatmap=True)
            assert result["grade"] == 1
        heat = result["heatmap"]
        cx, cy = blob_centre_in_model_image(blob_grader, image)
        near = np.hypot(cols - cx, rows - cy) < patch  # the blob's patch neighbourhood
        share_of_heat, share_of_area = heat[near].sum() / heat.sum(), near.mean()
        assert share_of_heat > 5 * share_of_area, (fx, fy, share_of_heat, share_of_area)
        peak_row, peak_col = np.unravel_index(heat.argmax(), heat.shape)
        assert np.hypot(peak_col - cx, peak_row - cy) < patch, (fx, fy, (peak_col, peak_row), (cx, cy))
        centroids.append(((heat * cols).sum() / heat.sum(), (heat * rows).sum() / heat.sum()))
    # the map moved with the blob: left blobs left of right blobs, top blobs above bottom blobs
    assert centroids[0][0] < centroids[1][0] - 10 and centroids[0][1] < centroids[2][1] - 10


def parameter_state(model):
    return {name: (p.requires_grad, p.grad) for name, p in model.named_parameters()}


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_frozen_backbone_is_explained_and_left_unchanged(context, fundus_images):
    model, processor = random_retinascan(seed=3)
    assert not any(p.requires_grad for p in model.clip.parameters())  # the shipped default: frozen
    model.train()  # explaining must use eval mode (no dropout), then hand the model back as it was ...
    model.clip.eval()  # ... including a backbone that a training loop keeps in eval mode
    before, hooks = parameter_state(model), hook_count(model)
    pixel_values = processor(fundus_images[:4])["pixel_values"]
    with context():
        result = grad_cam(model, pixel_values, mode="prototype")
    assert result.heatmaps.shape == (4, 32, 32) and result.heatmaps.dtype == torch.float32
    assert result.heatmaps.amax(dim=(1, 2)).tolist() == [1.0] * 4 and result.heatmaps.min() >= 0
    assert parameter_state(model) == before  # no requires_grad flipped, no .grad left behind
    assert hook_count(model) == hooks and model.training and model.projection.training
    assert not any(module.training for module in model.clip.modules())


def test_trainable_weights_get_no_gradients(detector, fundus_images):
    model = detector.model
    assert all(p.grad is None for p in model.parameters())
    grad_cam(model, detector.processor(fundus_images[:2])["pixel_values"], mode="ordinal")
    assert all(p.grad is None for p in model.parameters())


def test_batched_maps_equal_single_maps(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    pixel_values = processor(fundus_images[:5])["pixel_values"]
    batched = grad_cam(model, pixel_values, mode="prototype").heatmaps
    single = torch.cat([grad_cam(model, row[None], mode="prototype").heatmaps for row in pixel_values])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_ordinal_maps_of_grades_above_zero_coincide(tiny_model_and_processor, fundus_images):
    """Documented: CORAL's tasks share one weight vector, so grades 1-4 share one map and grade 0 opposes it."""
    model, processor = tiny_model_and_processor
    pixel_values = processor(fundus_images[:3])["pixel_values"]
    maps = [grad_cam(model, pixel_values, mode="ordinal", target_grade=g).heatmaps for g in range(5)]
    for grade in (2, 3, 4):
        torch.testing.assert_close(maps[grade], maps[1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(maps[0], maps[1], atol=1e-2)


def test_knn_grade_without_voters_has_an_empty_map(tiny_model_and_processor, bank_for, fundus_images):
    """The nearest bank row of image 3 is itself (grade 3): with k=1 nothing votes for grade 0."""
    model, processor = tiny_model_and_processor
    pixel_values = processor(fundus_images[3:4])["pixel_values"]
    decided = grad_cam(model, pixel_values, mode="knn", bank=bank_for, k=1)
    assert decided.target_grades.tolist() == [3] and decided.heatmaps.max() == 1.0
    absent = grad_cam(model, pixel_values, mode="knn", bank=bank_for, k=1, target_grade=0)
    assert absent.target_grades.tolist() == [0] and absent.heatmaps.max() == 0.0


@pytest.mark.parametrize("grade", [5, -1, 1.5, True, "2"])
def test_bad_target_grades_raise(tiny_model_and_processor, fundus_images, grade):
    model, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match="grade to explain"):
        grad_cam(model, processor(fundus_images[:1])["pixel_values"], target_grade=grade)


def test_non_finite_pixels_and_knn_without_bank_raise(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    pixel_values = processor(fundus_images[:2])["pixel_values"]
    with pytest.raises(ValueError, match="NaN"):
        grad_cam(model, pixel_values.clone().index_fill_(2, torch.tensor([3]), float("nan")))
    with pytest.raises(ValueError, match="feature bank"):
        grad_cam(model, pixel_values, mode="knn")
    assert hook_count(model) == 0  # the hook is removed on errors too


def test_colour_scale_and_overlay():
    ramp = np.linspace(0, 1, 5, dtype=np.float32)[None]
    colours = np.asarray(colorize(ramp)).astype(int)
    assert colours[0, 0].argmax() == 2 and colours[0, -1].argmax() == 0  # cold blue, hot red
    image = render_fundus(0, size=32, rng=np.random.default_rng(0))
    assert np.array_equal(np.asarray(overlay_heatmap(image, np.zeros((32, 32)))), np.asarray(image))
    hot = np.asarray(overlay_heatmap(image, np.ones((32, 32)), alpha=0.6)).astype(float)
    expected = 0.4 * np.asarray(image, float) + 0.6 * np.asarray(colorize(np.ones((32, 32))), float)
    assert np.abs(hot - expected).max() <= 1.0
    with pytest.raises(ValueError, match="differ in size"):
        overlay_heatmap(image, np.zeros((16, 16)))
