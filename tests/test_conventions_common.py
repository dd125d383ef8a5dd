"""The checks of transformers' own common test mixins (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`,
transformers 5.x) that apply to an image-only model, written against RetinaScan with a tester building tiny configs.

What does not apply, and why:
    - Text inputs: `test_inputs_embeds*`, `test_resize_tokens_embeddings*`, `test_resize_embeddings_untied*`,
      `test_feed_forward_chunking`, padding/attention-mask variants of the SDPA tests: the model takes pixels only
      (CLIP's text tower runs once, offline, to build the prototypes).
    - `test_model_get_set_embeddings` as written (it expects an `nn.Embedding`): a vision model's input embedding is
      its patch `Conv2d`, which is what transformers' own vision models return and what is checked here.
    - Generation and caches (`GenerationTesterMixin`, `test_bc_cache_name_forward`, ...): not a generative model.
    - `test_load_with_mismatched_shapes` / `test_can_load_ignoring_mismatched_shapes` (reloading with another
      `num_labels`): the heads are tied to the ICDR grades (one grade description, one CORAL threshold per grade),
      so `RetinaScanConfig` refuses a `num_labels` its descriptions and thresholds do not match.
    - `test_problem_types`: the loss is CORAL plus focal loss on the prototypes, not a `problem_type` choice.
    - `test_training_gradient_checkpointing` as written: it instruments the first `GradientCheckpointingLayer` in
      module order, which is CLIP's *text* tower, never run by `forward`; checked here on the vision tower.
    - Multi-GPU, offloading, flash-attention kernels, tensor parallelism, torch.compile/export: need accelerators
      or are outside this package's scope (CPU tests).
    - Image processor: `test_call_numpy_4_channels` keeps 4 channels, which a 3-channel CLIP cannot take: 4-channel
      statistics are refused with a `ValueError` and RGBA input is composited to RGB (or refused with
      `do_convert_rgb=False`); the torchvision-backend and fast/slow-equivalence tests need a second, torchvision
      backend, which this processor (PIL-based fundus detection and safe decoding) does not have.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, CLIPConfig
from transformers.image_utils import ChannelDimension
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from retinascan_hf import InvalidImageError, RetinaScanConfig, RetinaScanImageProcessor, RetinaScanModel
from retinascan_hf.image_processing_retinascan import RetinaScanImageProcessorKwargs
from retinascan_hf.synthetic import render_fundus
from retinascan_hf.tiny_clip import tiny_clip_config


@dataclass(frozen=True)
class RetinaScanModelTester:
    """Builds tiny configs and inputs, as the `*ModelTester` classes of transformers' test suite do."""

    batch_size: int = 3
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 32
    num_hidden_layers: int = 2
    freeze_backbone: bool = True

    @property
    def num_attention_heads(self) -> int:
        return max(1, self.hidden_size // 16)  # as `tiny_clip_config`

    @property
    def seq_length(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    def get_config(self) -> RetinaScanConfig:
        clip = tiny_clip_config(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_hidden_layers,
        )
        return RetinaScanConfig(backbone_config=clip, freeze_backbone=self.freeze_backbone, projection_dropout=0.0)

    def prepare_inputs(self, labels: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        inputs = {
            "pixel_values": torch.randn(self.batch_size, 3, self.image_size, self.image_size, generator=generator)
        }
        if labels:
            inputs["labels"] = torch.arange(self.batch_size) % 5
        return inputs

    def model(self, **config_overrides) -> RetinaScanModel:
        torch.manual_seed(0)
        config = self.get_config()
        for name, value in config_overrides.items():
            setattr(config, name, value)
        return RetinaScanModel(config).eval()


TESTERS = {
    "tiny-frozen": RetinaScanModelTester(),
    "tiny-trainable-one-layer": RetinaScanModelTester(
        batch_size=2, image_size=48, patch_size=16, hidden_size=16, num_hidden_layers=1, freeze_backbone=False
    ),
}


@pytest.fixture(params=TESTERS.values(), ids=TESTERS.keys())
def tester(request) -> RetinaScanModelTester:
    return request.param


# ----------------------------------------------------------------------------------------------- ModelTesterMixin


def test_save_load(tester, tmp_path):
    model, inputs = tester.model(), tester.prepare_inputs()
    with torch.no_grad():
        first = model(**inputs)[0]
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "generation_config.json").exists()
    with torch.no_grad():
        second = RetinaScanModel.from_pretrained(tmp_path)(**inputs)[0]
    assert torch.allclose(first, second, atol=1e-5)


def test_determinism_and_batching_equivalence(tester):
    model, inputs = tester.model(), tester.prepare_inputs()
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
        single = [model(pixel_values=row.unsqueeze(0)) for row in inputs["pixel_values"]]
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
        batched_rows = torch.cat([output[name] for output in single])
        assert torch.allclose(value.float(), batched_rows.float(), atol=1e-5), name


def test_main_input_name_is_the_first_forward_argument():
    assert list(inspect.signature(RetinaScanModel.forward).parameters)[1] == RetinaScanModel.main_input_name


def test_training(tester):
    model = tester.model()
    model.train()
    model(**tester.prepare_inputs(labels=True)).loss.backward()
    assert model.coral.bias.grad is not None and model.projection.fc1.weight.grad is not None
    backbone_grads = [parameter.grad is not None for parameter in model.clip.vision_model.parameters()]
    assert all(backbone_grads) if not tester.freeze_backbone else not any(backbone_grads)


def test_training_gradient_checkpointing_recomputes_the_vision_layers(tester):
    model = tester.model(freeze_backbone=False)
    model.apply_backbone_freezing()  # the config says trainable: nothing is frozen
    model.clip.requires_grad_(True)
    inputs = tester.prepare_inputs(labels=True)
    model.train()
    model(**inputs).loss.backward()
    reference = {
        name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None
    }
    model.zero_grad()
    model.activation_checkpointing_enable()
    calls = []
    # A module inside the checkpointed layer: it runs in the forward and again in the backward's recomputation.
    model.clip.vision_model.encoder.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model(**inputs).loss.backward()
    assert len(calls) == 2
    for name, gradient in reference.items():
        assert torch.allclose(gradient, dict(model.named_parameters())[name].grad, atol=1e-6), name


def test_attention_outputs(tester):
    model, inputs = tester.model(), tester.prepare_inputs()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True)
        both = model(**inputs, output_attentions=True, output_hidden_states=True)
    assert len(outputs.attentions) == tester.num_hidden_layers
    assert outputs.attentions[0].shape[-3:] == (tester.num_attention_heads, tester.seq_length, tester.seq_length)
    assert len(both) == len(outputs) + 1 and both.to_tuple()[-1] is both.attentions  # attentions last
    config = copy.deepcopy(model.config)
    config.output_attentions = True
    from_config = RetinaScanModel._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        assert len(from_config(**inputs).attentions) == tester.num_hidden_layers


def test_hidden_states_output(tester):
    model, inputs = tester.model(), tester.prepare_inputs()
    with torch.no_grad():
        hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    assert len(hidden_states) == tester.num_hidden_layers + 1
    assert hidden_states[0].shape[-2:] == (tester.seq_length, tester.hidden_size)
    with torch.no_grad():
        assert len(tester.model(output_hidden_states=True)(**inputs).hidden_states) == tester.num_hidden_layers + 1


def test_retain_grad_hidden_states_attentions():
    tester = TESTERS["tiny-trainable-one-layer"]
    model = tester.model()
    model.set_attn_implementation("eager")
    outputs = model(**tester.prepare_inputs(), output_hidden_states=True, output_attentions=True)
    hidden_states, attentions = outputs.hidden_states[0], outputs.attentions[0]
    hidden_states.retain_grad()
    attentions.retain_grad()
    outputs[0].flatten()[-1].backward()  # outputs[0] is `logits`
    assert hidden_states.grad is not None and attentions.grad is not None


def tensors_of(value) -> list[torch.Tensor]:
    """The tensors of a (nested) tuple, in order."""
    return [value] if isinstance(value, torch.Tensor) else [leaf for item in value for leaf in tensors_of(item)]


def test_model_outputs_equivalence(tester):
    model = tester.model()
    model.set_attn_implementation("eager")
    for extra in ({}, {"output_hidden_states": True}, {"output_attentions": True}):
        for labels in (False, True):
            inputs = {**tester.prepare_inputs(labels=labels), **extra}
            with torch.no_grad():
                as_dict = model(**inputs).to_tuple()
                as_tuple = model(**inputs, return_dict=False)
            flat_dict, flat_tuple = tensors_of(as_dict), tensors_of(as_tuple)
            assert len(flat_dict) == len(flat_tuple)
            assert all(torch.equal(a, b) for a, b in zip(flat_dict, flat_tuple, strict=True))


def test_model_get_set_embeddings_for_a_vision_model(tester):
    model = tester.model()
    assert isinstance(model.get_input_embeddings(), torch.nn.Module)
    replacement = torch.nn.Conv2d(3, tester.hidden_size, tester.patch_size, tester.patch_size, bias=False)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement
    assert model.get_output_embeddings() is None


def test_can_set_attention_dynamically_composite_model(tester):
    model = tester.model()
    assert model.config._attn_implementation == "sdpa"
    assert model.clip.vision_model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == model.clip.vision_model.config._attn_implementation == "eager"
    assert model.clip.text_model.config._attn_implementation == "eager"


def test_initialization_of_the_heads():
    """transformers' `test_initialization`: trainable weights come from `_init_weights` (std = initializer_range)."""
    config = TESTERS["tiny-frozen"].get_config()
    config.initializer_range = 1e-10
    model = RetinaScanModel(config)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and name != "coral.bias":
            assert abs(parameter.mean().item()) < 1e-6 and parameter.std().item() < 1e-6, name


# ---------------------------------------------------------------------------------------------------- ConfigTester

CONFIG_INPUTS = {"knn_k": 3, "projection_hidden_size": 16, "coral_thresholds": [0.1, 0.0, -0.2, 0.3]}


def test_config_to_json_string_and_file(tmp_path):
    config = RetinaScanConfig(**CONFIG_INPUTS)
    serialised = json.loads(config.to_json_string())
    assert all(serialised[key] == value for key, value in CONFIG_INPUTS.items())
    config.to_json_file(tmp_path / "config.json")
    assert RetinaScanConfig.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()


def test_config_from_and_save_pretrained_with_subfolder(tmp_path):
    config = RetinaScanConfig(**CONFIG_INPUTS)
    config.save_pretrained(tmp_path / "sub")
    assert RetinaScanConfig.from_pretrained(tmp_path, subfolder="sub").to_dict() == config.to_dict()
    assert RetinaScanConfig.from_pretrained(tmp_path / "sub").to_dict() == config.to_dict()
    with pytest.raises(OSError):
        RetinaScanConfig.from_pretrained(tmp_path / "missing")


def test_config_composite_backbone_loads_on_its_own(tmp_path):
    config = RetinaScanConfig(backbone_config=tiny_clip_config(), **CONFIG_INPUTS)
    config.save_pretrained(tmp_path)
    assert RetinaScanConfig.sub_configs == {"backbone_config": CLIPConfig}
    backbone = CLIPConfig.from_pretrained(tmp_path)
    expected = config.to_dict()["backbone_config"]
    actual = backbone.to_dict()
    actual.pop("transformers_version", None)
    assert actual == expected


def test_config_with_num_labels():
    config = RetinaScanConfig(num_labels=5)
    assert len(config.id2label) == len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3


def test_config_can_be_init_without_params_or_logged_warnings():
    logging.warning_once.cache_clear()
    with CaptureLogger(logging.get_logger("transformers.configuration_utils")) as captured:
        assert RetinaScanConfig() is not None and RetinaScanConfig(**CONFIG_INPUTS) is not None
    assert captured.out == ""


def test_config_loads_through_auto_config(tmp_path):
    RetinaScanConfig(**CONFIG_INPUTS).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is RetinaScanConfig


# ------------------------------------------------------------------------------------------ ImageProcessingTestMixin

PROCESSOR_DICT = {"size": {"height": 18, "width": 18}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def random_images(count=4, channels=3, seed=0, kind="pil", equal=False):
    """Random-noise images as transformers' `prepare_image_inputs` makes them: PIL, HWC numpy or CHW torch."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        height, width = (40, 40) if equal else rng.integers(30, 90, size=2)
        images.append(rng.integers(0, 255, size=(channels, height, width), dtype=np.uint8))
    if kind == "torch":
        return [torch.from_numpy(image) for image in images]
    if kind == "numpy":
        return [image.transpose(1, 2, 0) for image in images]
    return [Image.fromarray(np.moveaxis(image, 0, -1)) for image in images]


@pytest.fixture
def processor() -> RetinaScanImageProcessor:
    return RetinaScanImageProcessor(**PROCESSOR_DICT)


def test_processor_has_attributes_and_from_dict_kwargs():
    processor = RetinaScanImageProcessor(**PROCESSOR_DICT)
    assert processor.size == PROCESSOR_DICT["size"] and processor.image_mean == PROCESSOR_DICT["image_mean"]
    for value in (False, True):
        assert RetinaScanImageProcessor.from_dict(PROCESSOR_DICT, do_convert_rgb=value).do_convert_rgb is value
    assert RetinaScanImageProcessor.valid_kwargs is RetinaScanImageProcessorKwargs


def test_processor_json_round_trips(tmp_path, processor):
    serialised = json.loads(processor.to_json_string())
    assert all(serialised[key] == value for key, value in PROCESSOR_DICT.items())
    processor.to_json_file(tmp_path / "processor.json")
    assert RetinaScanImageProcessor.from_json_file(tmp_path / "processor.json").to_dict() == processor.to_dict()
    processor.save_pretrained(tmp_path)
    assert RetinaScanImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
    assert AutoImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
    assert RetinaScanImageProcessor() is not None


@pytest.mark.parametrize("kind", ["pil", "numpy", "torch"])
def test_call_pil_numpy_pytorch(processor, kind):
    images = random_images(kind=kind)
    assert tuple(processor(images[0], return_tensors="pt").pixel_values.shape) == (1, 3, 18, 18)
    assert tuple(processor(images, return_tensors="pt").pixel_values.shape) == (4, 3, 18, 18)


def test_torch_inputs_match_pil_inputs(processor):
    for chw in random_images(kind="torch", count=2):
        pil = Image.fromarray(chw.permute(1, 2, 0).numpy())
        for tensor in (chw, chw.permute(1, 2, 0), chw.float() / 255.0):
            assert torch.allclose(processor(tensor).pixel_values, processor(pil).pixel_values, atol=1e-5)
    batch = torch.stack(random_images(kind="torch", count=3, equal=True))  # BCHW: a batch along the first axis
    assert tuple(processor(batch).pixel_values.shape) == (3, 3, 18, 18)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_convert_to_rgb_mixed_input_batch(processor, channels):
    last = np.random.default_rng(channels).integers(0, 256, (40, 100, channels), dtype=np.uint8)
    first = last.transpose(2, 0, 1).copy()
    pil = Image.fromarray(last[..., 0]) if channels == 1 else Image.fromarray(last)
    batch = [pil, last, first, torch.from_numpy(last), torch.from_numpy(first)]
    encoded = processor(batch, do_convert_rgb=True, return_tensors="pt").pixel_values
    assert tuple(encoded.shape) == (5, 3, 18, 18)
    for row in encoded[1:]:
        assert torch.allclose(row, encoded[0], atol=1e-5)  # every layout of one image gives the same pixels


def test_per_call_overrides_equal_the_same_settings_on_the_processor(processor):
    image = render_fundus(2, size=80, rng=np.random.default_rng(3))
    overrides = {
        "size": 24,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": 0.5,
        "do_normalize": False,
        "do_rescale": False,
        "do_crop_fundus": False,
        "resample": Image.Resampling.NEAREST,
    }
    for name, value in overrides.items():
        expected = RetinaScanImageProcessor(**{**PROCESSOR_DICT, name: value})(image).pixel_values
        assert torch.equal(processor(image, **{name: value}).pixel_values, expected), name
    assert processor.size == PROCESSOR_DICT["size"] and processor.do_normalize is True  # the instance is unchanged
    assert torch.equal(processor(image, image_mean=None, size=None).pixel_values, processor(image).pixel_values)


def test_input_and_output_data_formats():
    # A 3-channel image 40 rows high and 3 columns wide: as an array (3, 40, 3) it also reads as HWC.
    chw = np.random.default_rng(0).integers(0, 256, (3, 40, 3), dtype=np.uint8)
    hwc = chw.transpose(1, 2, 0)
    processor = RetinaScanImageProcessor(**PROCESSOR_DICT, min_image_size=3, do_crop_fundus=False)
    expected = processor(hwc).pixel_values
    assert torch.equal(processor(chw, input_data_format=ChannelDimension.FIRST).pixel_values, expected)
    assert torch.equal(processor(torch.from_numpy(chw), input_data_format="channels_first").pixel_values, expected)
    assert not torch.equal(processor(chw).pixel_values, expected)  # without the hint it is read as HWC
    channels_last = processor(hwc, input_data_format="channels_last", data_format="channels_last").pixel_values
    assert torch.equal(channels_last, expected.permute(0, 2, 3, 1))


def test_return_tensors_and_cast_dtype_device(processor):
    images = random_images(kind="torch")
    assert isinstance(processor(images, return_tensors="np").pixel_values, np.ndarray)
    assert isinstance(processor(images, return_tensors=None).pixel_values, np.ndarray)
    encoding = processor(images, return_tensors="pt")
    assert encoding.pixel_values.dtype == torch.float32 and encoding.pixel_values.device == torch.device("cpu")
    assert encoding.to(torch.float16).pixel_values.dtype == torch.float16
    assert processor(images, return_tensors="pt").to("cpu", torch.bfloat16).pixel_values.dtype == torch.bfloat16


def test_preprocess_arguments_are_validated(processor):
    images = random_images(count=1)
    with pytest.raises(TypeError, match="extra_argument"):
        processor(images, extra_argument=True)
    with pytest.raises(TypeError, match="do_center_crop"):  # a standard option that does not apply is not ignored
        processor(images, do_center_crop=True)
    with pytest.raises(ValueError, match="image_mean"):
        processor(images, image_mean=[0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="square"):
        processor(images, size={"height": 10, "width": 12})
    with pytest.raises(ValueError, match="image_std"):
        processor(images, image_std=[0.5, 0.0, 0.5])


def test_do_convert_rgb_false_refuses_non_rgb_input(processor):
    rgba = np.random.default_rng(1).integers(0, 256, (40, 40, 4), dtype=np.uint8)
    with pytest.raises(InvalidImageError, match="do_convert_rgb=False"):
        processor(rgba, do_convert_rgb=False)
    rgb = rgba[..., :3]
    assert torch.equal(processor(rgb, do_convert_rgb=False).pixel_values, processor(rgb).pixel_values)


def test_override_instance_attributes_does_not_affect_other_instances():
    first, second = RetinaScanImageProcessor(), RetinaScanImageProcessor()
    first.size["height"] = -1
    first.image_mean[0] = -1
    assert second.size == {"height": 224, "width": 224} and second.image_mean[0] != -1
