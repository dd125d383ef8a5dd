"""An honest `forward`: unknown arguments raise, tuples on request, the backbone's hidden states and attentions,
and `logits` that image-classification tooling can use (their argmax is the model's ordinal decision)."""

from __future__ import annotations

import pytest
import torch
from conventions_support import cpu_arguments, pixel_dataset
from transformers import Trainer

from retinascan_hf.modeling_retinascan import ordinal_grade_logits, ordinal_grades, ordinal_probabilities
from retinascan_hf.tiny_clip import random_retinascan


@pytest.fixture(scope="module")
def eager_model():
    model, processor = random_retinascan(seed=2)
    model.set_attn_implementation("eager")  # only eager attention computes attention weights
    return model, processor


@pytest.mark.parametrize("name", ["lables", "pixel_value", "output_hidden_state"])
def test_unknown_keyword_arguments_raise_a_type_error_naming_them(tiny_model_and_processor, fundus_images, name):
    model, processor = tiny_model_and_processor
    inputs = processor(fundus_images[:2])
    with pytest.raises(TypeError, match=name):
        model(**inputs, **{name: torch.tensor([0, 1])})


def test_return_dict_false_returns_the_output_as_a_tuple(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    inputs = {**processor(fundus_images[:3]), "labels": torch.tensor([0, 2, 4])}
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for expected, actual in zip(as_dict.to_tuple(), as_tuple, strict=True):
        assert torch.equal(expected, actual)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    model.config.return_dict = False  # the config default is honoured too
    try:
        with torch.no_grad():
            assert isinstance(model(**inputs), tuple)
    finally:
        model.config.return_dict = True


def test_hidden_states_and_attentions_are_the_vision_towers(eager_model, fundus_images):
    model, processor = eager_model
    pixel_values = processor(fundus_images[:2])["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True, output_attentions=True)
        reference = model.clip.vision_model(pixel_values, output_hidden_states=True, output_attentions=True)
    vision = model.config.backbone_config.vision_config
    assert len(out.hidden_states) == vision.num_hidden_layers + 1
    assert len(out.attentions) == vision.num_hidden_layers
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    assert out.attentions[0].shape == (2, vision.num_attention_heads, tokens, tokens)
    for ours, theirs in zip(
        out.hidden_states + out.attentions, reference.hidden_states + reference.attentions, strict=True
    ):
        assert torch.allclose(ours, theirs)
    # Attentions come last in the tuple, after the hidden states, as in transformers.
    as_tuple = model(pixel_values=pixel_values, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert as_tuple[-1] is not None and len(as_tuple[-1]) == vision.num_hidden_layers


def test_hidden_states_follow_the_config_default(eager_model, fundus_images):
    model, processor = eager_model
    inputs = processor(fundus_images[:1])
    with torch.no_grad():
        assert model(**inputs).hidden_states is None and model(**inputs).attentions is None
        model.config.output_hidden_states = model.config.output_attentions = True
        try:
            out = model(**inputs)
        finally:
            model.config.output_hidden_states = model.config.output_attentions = False
    assert out.hidden_states is not None and out.attentions is not None


def test_cached_features_have_no_backbone_outputs(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    out = model(image_features=torch.randn(2, model.config.embedding_dim), output_hidden_states=True)
    assert out.hidden_states is None and out.logits.shape == (2, 5)


def test_grade_logits_argmax_is_the_ordinal_decision():
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(2000, 4, generator=generator) * 3  # rank-inconsistent rows included
    for temperature in (0.5, 1.0, 2.0):
        thresholds = torch.randn(4, generator=generator)
        grade_logits = ordinal_grade_logits(logits, temperature, thresholds)
        assert grade_logits.shape == (2000, 5)
        assert torch.equal(grade_logits.argmax(dim=-1), ordinal_grades(logits, temperature, thresholds))
    # Adjacent grades differ by one calibrated task logit: softmax is the adjacent-categories model.
    rank_consistent = torch.tensor([[2.0, 0.5, -1.0, -3.0]])
    steps = ordinal_grade_logits(rank_consistent, 1.0, torch.zeros(4)).diff(dim=-1)
    assert torch.allclose(steps, rank_consistent)


def test_model_logits_agree_with_predicted_grade_and_probs(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    with torch.no_grad():
        out = model(**processor(fundus_images))
    assert torch.equal(out.logits.argmax(-1), out.predicted_grade)
    thresholds = torch.tensor(model.config.coral_thresholds)
    expected = ordinal_probabilities(out.ordinal_logits, model.config.ordinal_temperature, thresholds)
    assert torch.allclose(out.probs, expected)


def test_trainer_predict_returns_logits_first(tiny_model_and_processor, fundus_images, tmp_path):
    model, processor = tiny_model_and_processor
    dataset = pixel_dataset(processor, fundus_images)
    predictions = Trainer(model=model, args=cpu_arguments(tmp_path)).predict(dataset).predictions
    with torch.no_grad():
        expected = model(pixel_values=processor(fundus_images)["pixel_values"])
    assert predictions[0].shape == (10, 5)
    assert torch.allclose(torch.from_numpy(predictions[0]), expected.logits, atol=1e-5)
    assert (predictions[0].argmax(-1) == expected.predicted_grade.numpy()).all()


def test_input_embeddings_are_the_patch_embedding(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    embedding = model.get_input_embeddings()
    assert embedding is model.clip.vision_model.embeddings.patch_embedding
    assert isinstance(embedding, torch.nn.Conv2d)
    assert model.get_output_embeddings() is None


def test_set_input_embeddings_replaces_the_patch_embedding(fundus_images):
    model, processor = random_retinascan(seed=1)
    pixel_values = processor(fundus_images[:2])["pixel_values"]
    with torch.no_grad():
        before = model.forward_features(pixel_values)
        replacement = torch.nn.Conv2d(3, 32, kernel_size=8, stride=8, bias=False)
        torch.nn.init.zeros_(replacement.weight)
        model.set_input_embeddings(replacement)
        after = model.forward_features(pixel_values)
    assert model.get_input_embeddings() is replacement
    assert not torch.allclose(before, after)
    assert torch.allclose(after[0], after[1], atol=1e-6)  # a zero patch embedding makes every image look alike
