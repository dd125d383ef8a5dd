"""RetinaScanModel: heads and losses against reference implementations, the feature/head seam, outputs."""

from __future__ import annotations

import pytest
import torch
from coral_pytorch.dataset import levels_from_labelbatch
from coral_pytorch.layers import CoralLayer
from coral_pytorch.losses import coral_loss as reference_coral_loss

from retinascan_hf import RetinaScanModel
from retinascan_hf.modeling_retinascan import (
    coral_loss,
    focal_loss,
    ordinal_grades,
    ordinal_levels,
    ordinal_probabilities,
)
from retinascan_hf.tiny_clip import byte_level_clip_tokenizer, random_retinascan


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coral_loss_and_levels_match_coral_pytorch(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, 4, generator=generator) * 3
    labels = torch.randint(0, 5, (16,), generator=generator)
    levels = ordinal_levels(labels, 5)
    assert torch.equal(levels, levels_from_labelbatch(labels, num_classes=5))
    assert torch.allclose(coral_loss(logits, labels), reference_coral_loss(logits, levels), atol=1e-6)


def test_coral_head_matches_coral_layer_with_same_parameters(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    reference = CoralLayer(size_in=model.config.embedding_dim, num_classes=5)
    assert torch.allclose(model.coral.bias, reference.coral_bias)  # same descending initial biases
    reference.coral_weights.weight.data.copy_(model.coral.linear.weight)
    features = torch.randn(6, model.config.embedding_dim)
    with torch.no_grad():
        assert torch.allclose(model.coral(features), reference(features), atol=1e-6)


def test_focal_loss_reduces_to_cross_entropy_at_gamma_zero_and_downweights_easy_examples():
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    assert torch.allclose(focal_loss(logits, labels, 0.0), torch.nn.functional.cross_entropy(logits, labels))
    per_example = [focal_loss(logits[i : i + 1], labels[i : i + 1], 2.5) for i in range(2)]
    cross_entropy = [torch.nn.functional.cross_entropy(logits[i : i + 1], labels[i : i + 1]) for i in range(2)]
    assert per_example[0] / cross_entropy[0] < 0.01 < per_example[1] / cross_entropy[1]


def test_ordinal_probabilities_are_a_distribution_even_when_rank_inconsistent():
    logits = torch.tensor([[3.0, 2.0, -1.0, -4.0], [-2.0, 1.5, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])
    probs = ordinal_probabilities(logits)
    assert probs.shape == (3, 5)
    assert torch.all(probs >= 0)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    exceed = torch.sigmoid(logits[0])
    expected = torch.tensor(
        [1 - exceed[0], exceed[0] - exceed[1], exceed[1] - exceed[2], exceed[2] - exceed[3], exceed[3]]
    )
    assert torch.allclose(probs[0], expected, atol=1e-6)
    # A higher temperature flattens the distribution toward its middle
    assert ordinal_probabilities(logits[:1], temperature=10.0).max() < probs[0].max()


def test_ordinal_grades_count_leading_passes_only():
    logits = torch.tensor([[3.0, 2.0, -1.0, 5.0], [-1.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    assert ordinal_grades(logits, 1.0, torch.zeros(4)).tolist() == [2, 0, 4]
    assert ordinal_grades(logits, 1.0, torch.tensor([0.0, 2.5, 0.0, 0.0])).tolist() == [1, 0, 1]
    assert ordinal_grades(logits, 4.0, torch.full((4,), 0.6)).tolist() == [1, 0, 0]


def test_forward_shapes_loss_and_consistency(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    inputs = processor(fundus_images[:5])
    labels = torch.arange(5)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    dim = model.config.embedding_dim
    assert out.ordinal_logits.shape == (5, 4) and out.prototype_logits.shape == (5, 5)
    assert out.probs.shape == (5, 5) and out.embeddings.shape == (5, dim) and out.predicted_grade.shape == (5,)
    assert torch.allclose(out.probs.sum(-1), torch.ones(5), atol=1e-6)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(5), atol=1e-5)
    expected_loss = coral_loss(out.ordinal_logits, labels) + 0.5 * focal_loss(out.prototype_logits, labels, 2.5)
    assert torch.allclose(out.loss, expected_loss, atol=1e-6)
    assert model(**inputs).loss is None


def test_forward_head_on_cached_features_equals_full_forward(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    pixel_values = processor(fundus_images[:4])["pixel_values"]
    with torch.no_grad():
        full = model(pixel_values=pixel_values)
        features = model.forward_features(pixel_values)
        from_cache = model(image_features=features)
    assert features.shape == (4, model.config.embedding_dim)
    for name in ("ordinal_logits", "prototype_logits", "embeddings", "probs"):
        assert torch.allclose(getattr(full, name), getattr(from_cache, name), atol=1e-6), name


def test_prototype_logits_are_scaled_cosines_to_text_prototypes(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    with torch.no_grad():
        out = model(**processor(fundus_images[:3]))
    prototypes = model.text_prototypes
    assert torch.allclose(prototypes.norm(dim=-1), torch.ones(5), atol=1e-5)
    cosine = out.embeddings @ prototypes.T
    assert torch.allclose(out.prototype_logits, cosine / model.config.prototype_temperature, atol=1e-5)


def test_text_prototypes_change_with_descriptions_and_survive_save_load(tmp_path):
    model, _ = random_retinascan(seed=3)
    before = model.text_prototypes.clone()
    descriptions = ["healthy", "a few dots", "dots and spots", "many haemorrhages", "new vessels"]
    model.compute_text_prototypes(byte_level_clip_tokenizer(), descriptions)
    assert not torch.allclose(before, model.text_prototypes)
    assert model.config.grade_descriptions == descriptions
    model.save_pretrained(tmp_path)
    loaded = RetinaScanModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.text_prototypes, model.text_prototypes)
    assert loaded.config.grade_descriptions == descriptions
    with pytest.raises(ValueError, match="5 descriptions"):
        model.compute_text_prototypes(byte_level_clip_tokenizer(), ["only one"])


def test_backbone_is_frozen_by_default_and_trainable_on_request():
    frozen, _ = random_retinascan()
    assert not any(p.requires_grad for p in frozen.clip.parameters())
    assert all(p.requires_grad for p in frozen.projection.parameters())
    assert all(p.requires_grad for p in frozen.coral.parameters())
    unfrozen, _ = random_retinascan(freeze_backbone=False)
    assert all(p.requires_grad for p in unfrozen.clip.vision_model.parameters())


def test_loss_backpropagates_into_heads_only_when_frozen(tiny_model_and_processor, fundus_images):
    model, processor = random_retinascan(seed=5)
    model.train()
    out = model(**processor(fundus_images[:5]), labels=torch.arange(5))
    out.loss.backward()
    assert model.projection.fc1.weight.grad is not None and model.coral.bias.grad is not None
    assert all(p.grad is None for p in model.clip.parameters())


def test_save_load_round_trip_preserves_outputs(tmp_path, tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path)
    loaded = RetinaScanModel.from_pretrained(tmp_path).eval()
    inputs = processor(fundus_images[:3])
    with torch.no_grad():
        expected, actual = model(**inputs), loaded(**inputs)
    for name in ("ordinal_logits", "prototype_logits", "embeddings"):
        assert torch.allclose(getattr(expected, name), getattr(actual, name), atol=1e-6), name


def test_from_backbone_builds_from_a_local_clip_checkpoint(tmp_path):
    from transformers import CLIPModel

    from retinascan_hf.tiny_clip import tiny_clip_config

    clip_dir = tmp_path / "clip"
    CLIPModel(tiny_clip_config()).save_pretrained(clip_dir)
    byte_level_clip_tokenizer().save_pretrained(clip_dir)
    model = RetinaScanModel.from_backbone(str(clip_dir), knn_k=7)
    assert model.config.knn_k == 7
    assert model.config.backbone_config.vision_config.image_size == 32
    reference = CLIPModel.from_pretrained(clip_dir)
    assert torch.equal(model.clip.visual_projection.weight, reference.visual_projection.weight)
    assert torch.allclose(model.text_prototypes.norm(dim=-1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"pixel_values": torch.zeros(1, 3, 64, 64)}, r"\[B, 3, 32, 32\]"),
        ({"pixel_values": torch.zeros(3, 32, 32)}, r"\[B, 3, 32, 32\]"),
    ],
)
def test_bad_forward_inputs_raise_clear_errors(tiny_model_and_processor, kwargs, message):
    model, _ = tiny_model_and_processor
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_feature_statistics_standardise_head_inputs_and_are_saved(tmp_path):
    model, _ = random_retinascan(seed=4)
    features = torch.randn(50, model.config.embedding_dim) * 3 + 7
    with torch.no_grad():
        before = model.forward_head(features).embeddings
        model.set_feature_statistics(features)
        after = model.forward_head(features).embeddings
        shifted = model.forward_head(features * 2 - 5).embeddings
    assert not torch.allclose(before, after)
    assert torch.allclose(model.feature_mean, features.mean(0), atol=1e-5)
    assert torch.allclose(model.feature_std, features.std(0), atol=1e-5)
    # Standardisation makes the heads blind to the statistics' own affine frame:
    model.set_feature_statistics(features * 2 - 5)
    with torch.no_grad():
        assert torch.allclose(model.forward_head(features * 2 - 5).embeddings, after, atol=1e-5)
    assert not torch.allclose(shifted, after)
    model.save_pretrained(tmp_path)
    loaded = RetinaScanModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.feature_mean, model.feature_mean) and torch.equal(loaded.feature_std, model.feature_std)
    with pytest.raises(ValueError, match="two feature vectors"):
        model.set_feature_statistics(features[:1])


def test_ordinal_grade_is_the_median_of_the_reported_probabilities():
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(500, 4, generator=generator) * 3
    thresholds = torch.randn(4, generator=generator)
    for temperature in (0.5, 1.0, 2.0):
        probs = ordinal_probabilities(logits, temperature, thresholds)
        median = (probs.cumsum(-1) >= 0.5).float().argmax(-1)
        assert torch.equal(ordinal_grades(logits, temperature, thresholds), median)
