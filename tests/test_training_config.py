"""`TrainingConfig`: reference defaults, YAML loading, command-line overrides, typed validation."""

from __future__ import annotations

import argparse

import pytest
import torch

from retinascan_hf.training import TrainingConfig
from retinascan_hf.training.trainer import resolve_mixed_precision


def parse(argv: list[str]) -> TrainingConfig:
    parser = argparse.ArgumentParser()
    TrainingConfig.add_arguments(parser)
    return TrainingConfig.from_args(parser.parse_args(argv))


def test_defaults_are_the_reference_configuration():
    config = TrainingConfig()
    reference = {
        "learning_rate": 1e-4,
        "weight_decay": 1e-4,
        "num_epochs": 50,
        "warmup_epochs": 2.0,
        "n_per_class": 8,
        "max_grad_norm": 1.0,
        "freeze_backbone": True,
        "backbone": "openai/clip-vit-base-patch16",
    }
    assert {name: getattr(config, name) for name in reference} == reference
    assert config.model_overrides() == {"freeze_backbone": True}  # loss weights: the model config's defaults


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 3e-4\nnum_epochs: 10\nlog_with: [csv, tensorboard]\nfocal_gamma: 2\n")
    config = parse(["--config", str(path), "--num-epochs", "5", "--no-freeze-backbone", "--data", "corpus"])
    assert config.learning_rate == 3e-4  # PyYAML reads `3e-4` as text: converted to the field's type
    assert config.num_epochs == 5 and config.freeze_backbone is False and config.data == "corpus"
    assert config.log_with == ["csv", "tensorboard"]
    assert config.focal_gamma == 2.0 and isinstance(config.focal_gamma, float)
    assert config.model_overrides() == {"freeze_backbone": False, "focal_gamma": 2.0}
    assert parse([]).to_dict() == TrainingConfig().to_dict()


def test_yaml_round_trip(tmp_path):
    config = TrainingConfig(num_epochs=3, mixed_precision="bf16", batches_per_epoch=7)
    config.to_yaml(tmp_path / "config.yaml")
    assert TrainingConfig.from_yaml(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rte": 1e-4}, "Unknown TrainingConfig field"),
        ({"num_epochs": "many"}, "num_epochs must be a number"),
        ({"n_per_class": 0}, "n_per_class must be at least 1"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"freeze_backbone": "yes"}, "freeze_backbone must be true or false"),
        ({"warmup_epochs": 60}, "warmup_epochs must lie in"),
    ],
)
def test_bad_values_are_rejected_with_the_field_name(values, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig.from_dict(values)


def test_cli_rejects_bad_choices():
    with pytest.raises(SystemExit):
        parse(["--mixed-precision", "fp8"])


def test_mixed_precision_auto_follows_the_device(monkeypatch):
    assert resolve_mixed_precision(TrainingConfig(mixed_precision="auto", cpu=True)) == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_mixed_precision(TrainingConfig()) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_mixed_precision(TrainingConfig()) == "bf16"
    assert resolve_mixed_precision(TrainingConfig(mixed_precision="no")) == "no"


def test_every_flag_has_help_from_the_docstring():
    import dataclasses

    from retinascan_hf.training.config import _field_docs

    documented = _field_docs()
    assert [field.name for field in dataclasses.fields(TrainingConfig) if not documented.get(field.name)] == []
    parser = argparse.ArgumentParser()
    TrainingConfig.add_arguments(parser)
    assert "balanced sampler" in parser.format_help()
