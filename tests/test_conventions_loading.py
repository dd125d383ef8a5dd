"""Loading like a transformers model: `freeze_backbone` on every path, attention implementations, loading info.

Root cause of the unfrozen backbone: transformers' loader (`core_model_loading.set_param_for_module`) replaces every
parameter by a new `nn.Parameter(..., requires_grad=True)` holding the checkpoint's values, so `requires_grad=False`
set in `__init__` does not survive `from_pretrained`. The remote-code paths (a process that never imports the package)
are checked in `test_conventions_remote.py`.
"""

from __future__ import annotations

import pytest
import torch
from conventions_support import cpu_arguments, pixel_dataset
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, Trainer

from retinascan_hf import RetinaScanConfig, RetinaScanModel
from retinascan_hf.tiny_clip import random_retinascan, tiny_clip_config


def clip_is_frozen(model: RetinaScanModel) -> bool:
    return not any(parameter.requires_grad for parameter in model.clip.parameters())


def heads_train(model: RetinaScanModel) -> bool:
    heads = [*model.projection.parameters(), *model.coral.parameters()]
    return all(parameter.requires_grad for parameter in heads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    directory = tmp_path_factory.mktemp("saved")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


LOADERS = {
    "constructor": lambda directory: RetinaScanModel(AutoConfig.from_pretrained(directory)),
    "AutoModel.from_config": lambda directory: AutoModel.from_config(AutoConfig.from_pretrained(directory)),
    "RetinaScanModel.from_pretrained": lambda directory: RetinaScanModel.from_pretrained(directory),
    "AutoModel.from_pretrained": lambda directory: AutoModel.from_pretrained(directory),
    "AutoModelForImageClassification.from_pretrained": (
        lambda directory: AutoModelForImageClassification.from_pretrained(directory)
    ),
    "from_pretrained(output_loading_info=True)": (
        lambda directory: RetinaScanModel.from_pretrained(directory, output_loading_info=True)[0]
    ),
}


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_freeze_backbone_holds_on_every_loading_path(saved, loader):
    model = loader(saved)
    assert isinstance(model, RetinaScanModel) and model.config.freeze_backbone is True
    assert clip_is_frozen(model)
    assert heads_train(model)


def test_an_unfrozen_model_loads_trainable(tmp_path):
    model, _ = random_retinascan(freeze_backbone=False)
    model.save_pretrained(tmp_path)
    loaded = RetinaScanModel.from_pretrained(tmp_path)
    assert loaded.config.freeze_backbone is False
    assert all(parameter.requires_grad for parameter in loaded.clip.vision_model.parameters())


def test_one_trainer_step_after_from_pretrained_leaves_clip_untouched(
    saved, tiny_model_and_processor, fundus_images, tmp_path
):
    """The reported damage: fine-tuning a loaded model with `transformers.Trainer` at lr 1e-3 moved all CLIP weights."""
    model = RetinaScanModel.from_pretrained(saved)
    dataset = pixel_dataset(tiny_model_and_processor[1], fundus_images)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    arguments = cpu_arguments(tmp_path, max_steps=1, per_device_train_batch_size=10, learning_rate=1e-3)
    Trainer(model=model, args=arguments, train_dataset=dataset).train()
    after = model.state_dict()
    clip_names = [name for name in before if name.startswith("clip.")]
    assert clip_names and all(torch.equal(before[name], after[name]) for name in clip_names)
    assert not torch.equal(before["projection.fc1.weight"], after["projection.fc1.weight"])


def test_output_loading_info_returns_the_model_and_the_report(saved):
    model, info = RetinaScanModel.from_pretrained(saved, output_loading_info=True)
    assert isinstance(model, RetinaScanModel)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.pretrained_source["pretrained_model_name_or_path"] == str(saved)


def test_from_pretrained_without_a_checkpoint_uses_the_state_dict(tiny_model_and_processor):
    """transformers' `test_from_pretrained_no_checkpoint`: weights from `state_dict`, nothing on disk."""
    model, _ = tiny_model_and_processor
    loaded = RetinaScanModel.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    for (name, expected), actual in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name
    assert loaded.pretrained_source is None  # no folder or repo: nowhere to look for a feature bank
    assert clip_is_frozen(loaded)


def attention_implementations(model: RetinaScanModel) -> set[str]:
    """Every attention setting of the model: top-level config, CLIP config, and CLIP's vision tower."""
    return {
        model.config._attn_implementation,
        model.config.backbone_config._attn_implementation,
        model.clip.config._attn_implementation,
        model.clip.vision_model.config._attn_implementation,
    }


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attn_implementation_reaches_the_backbone(saved, implementation):
    model = RetinaScanModel.from_pretrained(saved, attn_implementation=implementation)
    assert attention_implementations(model) == {implementation}
    config_only = RetinaScanModel(RetinaScanConfig(backbone_config=tiny_clip_config()))
    assert attention_implementations(config_only) == {"sdpa"}  # CLIP's default, now declared at the top too


def test_sdpa_and_eager_give_the_same_outputs(saved, tiny_model_and_processor, fundus_images):
    _, processor = tiny_model_and_processor
    inputs = processor(fundus_images[:4])
    outputs = {}
    for implementation in ("sdpa", "eager"):
        model = RetinaScanModel.from_pretrained(saved, attn_implementation=implementation).eval()
        with torch.no_grad():
            outputs[implementation] = model(**inputs)
    for name in ("logits", "ordinal_logits", "embeddings", "image_features"):
        assert torch.allclose(outputs["sdpa"][name], outputs["eager"][name], atol=1e-5), name


def test_attention_can_be_switched_on_a_loaded_model(saved):
    model = RetinaScanModel.from_pretrained(saved, attn_implementation="sdpa")
    model.set_attn_implementation("eager")
    assert attention_implementations(model) == {"eager"}
    with pytest.raises(ValueError, match="not supported"):
        model.set_attn_implementation("no_such_attention")
