"""RetinaScanConfig: defaults, validation, nesting of the CLIP config, JSON round trip."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, CLIPConfig

from retinascan_hf import ICDR_LABELS, RetinaScanConfig
from retinascan_hf.tiny_clip import tiny_clip_config


def test_defaults_match_reference_design():
    config = RetinaScanConfig()
    vision = config.backbone_config.vision_config
    assert (vision.patch_size, vision.image_size, config.embedding_dim) == (16, 224, 512)
    assert config.projection_hidden_size == 512
    assert (config.coral_loss_weight, config.prototype_loss_weight, config.focal_gamma) == (1.0, 0.5, 2.5)
    assert config.knn_k == 10
    assert config.ordinal_temperature == config.prototype_calibration_temperature == 1.0
    assert config.coral_thresholds == [0.0, 0.0, 0.0, 0.0]
    assert config.freeze_backbone is True
    assert [config.id2label[i] for i in range(5)] == list(ICDR_LABELS)
    assert config.label2id["Proliferative DR"] == 4
    assert len(config.grade_descriptions) == 5 and "proliferative" in config.grade_descriptions[4].lower()


@pytest.mark.parametrize("as_dict", [True, False])
def test_backbone_config_accepts_clip_config_or_dict(as_dict):
    clip = tiny_clip_config(projection_dim=24)
    backbone = {k: v for k, v in clip.to_dict().items() if k != "model_type"} if as_dict else clip
    config = RetinaScanConfig(backbone_config=backbone)
    assert isinstance(config.backbone_config, CLIPConfig)
    assert config.embedding_dim == 24


def test_save_and_reload_round_trip(tmp_path):
    config = RetinaScanConfig(
        backbone_config=tiny_clip_config(), knn_k=3, ordinal_temperature=1.7, coral_thresholds=[0.1, 0.2, -0.3, 0.4]
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, RetinaScanConfig)
    assert loaded.knn_k == 3 and loaded.ordinal_temperature == 1.7
    assert loaded.coral_thresholds == [0.1, 0.2, -0.3, 0.4]
    assert loaded.backbone_config.vision_config.image_size == 32
    assert loaded.embedding_hash() == config.embedding_hash()


def test_embedding_hash_ignores_calibration_but_not_architecture():
    base = RetinaScanConfig(backbone_config=tiny_clip_config())
    calibrated = RetinaScanConfig(backbone_config=tiny_clip_config(), ordinal_temperature=2.0, coral_thresholds=[1] * 4)
    wider = RetinaScanConfig(backbone_config=tiny_clip_config(), projection_hidden_size=64)
    assert base.embedding_hash() == calibrated.embedding_hash()
    assert base.embedding_hash() != wider.embedding_hash()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"coral_thresholds": [0.0]}, "coral_thresholds"),
        ({"grade_descriptions": ["a", "b"]}, "grade_descriptions"),
        ({"ordinal_temperature": 0.0}, "ordinal_temperature"),
        ({"knn_k": 0}, "knn_k"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        RetinaScanConfig(backbone_config=tiny_clip_config(), **overrides)
