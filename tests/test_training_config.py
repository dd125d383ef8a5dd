"""`TrainingConfig`: reference defaults, YAML loading, command-line overrides (HfArgumentParser), validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from retinascan_hf.training import TrainingConfig
from retinascan_hf.training.trainer import resolve_mixed_precision

parse = TrainingConfig.parse_args


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
        ({"learning_rte": 1e-4}, "Unknown TrainingConfig field.*did you mean 'learning_rate'"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
        ({"aug_rotation": float("inf")}, "aug_rotation must be a finite number"),
        ({"weight_decay": -1}, "weight_decay may not be negative"),
        ({"log_with": ["csv", "wandb"]}, "log_with must list trackers"),
        ({"log_with": 3}, "log_with must be a list"),
        ({"backbone": {"name": "clip"}}, "backbone must be text"),
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


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--mixed-precision", "fp8"], "--mixed_precision"), (["--num-epochs", "many"], "--num_epochs")],
)
def test_bad_flags_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("num_epochs: many\n", "num_epochs must be a number"),
        ("- learning_rate\n", "must hold a mapping"),
        ("learning_rate: [1e-4\n", "Cannot read the training configuration"),
        ("n_per_class: 2\nlearning_rte: 3e-4\n", "Unknown TrainingConfig field.*in .*run.yaml"),
    ],
)
def test_bad_yaml_files_are_refused_naming_file_and_field(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse(["--config", str(path)])


def test_mixed_precision_auto_follows_the_device(monkeypatch):
    assert resolve_mixed_precision(TrainingConfig(mixed_precision="auto", cpu=True)) == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_mixed_precision(TrainingConfig()) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_mixed_precision(TrainingConfig()) == "bf16"
    assert resolve_mixed_precision(TrainingConfig(mixed_precision="no")) == "no"


def test_every_field_is_a_flag_with_help_text():
    from transformers import HfArgumentParser

    parser = TrainingConfig.argument_parser()
    assert isinstance(parser, HfArgumentParser)
    text = " ".join(parser.format_help().split())
    for item in dataclasses.fields(TrainingConfig):
        assert item.metadata["help"], item.name
        assert f"--{item.name.replace('_', '-')}" in text
    assert "balanced sampler" in text and "~/.cache/huggingface" in text  # where the feature cache lives
    assert "--no-freeze-backbone" in text and "--no-progress" in text
