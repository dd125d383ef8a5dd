"""`TrainingConfig`: every training hyper-parameter, typed, read from YAML and overridden by command-line flags.

Precedence is defaults < YAML file < command-line flags. The defaults are the reference configuration
(AdamW 1e-4 / 1e-4, 50 epochs, 2-epoch cosine warm-up, 8 images per grade per batch, clipping at 1.0), so a
YAML file or a flag only ever states what differs from it. Loss weights and the focal gamma default to
`None`, meaning "the model config's value": `RetinaScanConfig` stays the single source of truth for them.

The flags come from the dataclass itself through `transformers.HfArgumentParser` (each field's `help` lives in
its `metadata`), as in transformers' own `TrainingArguments`: one `--field-name` (or `--field_name`) per field,
`--no-field` for booleans that default to true.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser

TINY_BACKBONE = "tiny"
TRACKERS = ("csv", "tensorboard")
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
OptimizerImplementation = Literal["auto", "fused", "foreach", "for_loop"]
DEFAULT_CACHE_DIR_HELP = "$HF_HOME/retinascan/feature-cache (HF_HOME defaults to ~/.cache/huggingface)"


def default_cache_dir() -> str:
    """Shared across runs and output folders, so a second run on the same backbone finds the features."""
    from huggingface_hub.constants import HF_HOME

    return os.path.join(HF_HOME, "retinascan", "feature-cache")


def _option(default: Any, *, help: str, **metadata: Any) -> Any:
    """A dataclass field whose `help` (and any other `add_argument` keyword) HfArgumentParser turns into a flag."""
    metadata = {"help": help.replace("%", "%%"), **metadata}  # argparse formats help with `%`
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainingConfig:
    """Hyper-parameters and paths of one training run; each field's `help` says what it does.

    Construct it directly, with [`TrainingConfig.from_yaml`], or from command-line arguments with
    [`TrainingConfig.parse_args`] (what `retinascan train` and `scripts/train.py` do). Values are checked on
    construction: a wrong type, range or choice raises `ValueError` naming the field.
    """

    data: str | None = _option(
        None, help="folder of the corpus DatasetDict (train/validation/test; written by `retinascan data build`)"
    )
    output_dir: str = _option(
        "retinascan-output", help="receives model/ (the finished model folder), checkpoints/, logs/, metrics.json"
    )
    backbone: str = _option(
        "openai/clip-vit-base-patch16",
        help=f"CLIP repo id or folder for RetinaScanModel.from_backbone, or '{TINY_BACKBONE}' for a random tiny "
        "CLIP built offline (tiny_image_size px)",
    )
    tiny_image_size: int = _option(32, help="input size of the 'tiny' backbone")
    cache_dir: str | None = _option(
        None,
        help="root of the frozen-backbone feature cache (one sub-folder per backbone+processor fingerprint), "
        f"shared between runs; None means {DEFAULT_CACHE_DIR_HELP}",
    )
    feature_cache_dtype: Literal["float32", "float16"] = _option(
        "float32",
        help="storage of cached features: float32 (exact) or float16 (half the disk and page cache; features "
        "are rounded once, identically whether a run computes them or reuses them)",
    )
    freeze_backbone: bool = _option(
        True,
        help="train only the heads on cached backbone features (fast path); --no-freeze-backbone fine-tunes "
        "CLIP's image tower end to end",
    )
    n_views: int = _option(
        4,
        help="cached views per image: view 0 is the un-augmented picture, views 1.. are augmented (with an "
        "unfrozen backbone it bounds the augmentations drawn per image in the same way)",
    )
    aug_flip: bool = _option(True, help="random horizontal and vertical flips")
    aug_rotation: float = _option(180.0, help="random rotation up to +- this many degrees")
    aug_brightness: float = _option(0.2, help="random brightness factor in 1 +- this")
    aug_contrast: float = _option(0.2, help="random contrast factor in 1 +- this")
    num_epochs: int = _option(50, help="epochs to train")
    learning_rate: float = _option(1e-4, help="AdamW peak learning rate (cosine schedule after the warm-up)")
    weight_decay: float = _option(1e-4, help="AdamW weight decay")
    warmup_epochs: float = _option(2.0, help="linear learning-rate warm-up, in epochs")
    optimizer_implementation: OptimizerImplementation = _option(
        "auto",
        help="AdamW kernel: 'fused' (one kernel for all parameters), 'foreach' (one kernel per operation), "
        "'for_loop' (per parameter); 'auto' is fused where the device supports it, else foreach. The same update "
        "up to float rounding",
    )
    torch_compile: bool = _option(
        False,
        help="compile the training step's forward and backward with torch.compile (inductor); falls back to eager "
        "with a warning where compiling is unavailable. Off by default: on a 2-core CPU, 50 epochs of head training "
        "took longer compiled than eager, compile time included (benchmarks/head_training.json)",
    )
    layerwise_lr_decay: float = _option(
        1.0,
        help="with an unfrozen backbone, CLIP vision layer i of L learns at learning_rate * decay ** (L - i); "
        "1.0 disables it",
    )
    n_per_class: int = _option(8, help="images of each grade per batch (balanced sampler); batch size is 5x this")
    batches_per_epoch: int | None = _option(
        None, help="batches per process per epoch; None means one pass over the training split"
    )
    gradient_accumulation_steps: int = _option(1, help="batches accumulated per optimizer step")
    max_grad_norm: float = _option(1.0, help="gradient-norm clipping")
    mixed_precision: MixedPrecision = _option(
        "auto", help="'auto' picks bf16 on GPUs that support it, else fp16 on GPUs, no autocast on CPU"
    )
    cpu: bool = _option(
        False,
        help="force the CPU even where a GPU is present (without a GPU the CPU, and gloo for several processes, "
        "is chosen anyway)",
    )
    seed: int = _option(42, help="seeds model initialisation, batches, augmentations and dropout")
    coral_loss_weight: float | None = _option(None, help="CORAL loss weight; None keeps the model config's (1.0)")
    prototype_loss_weight: float | None = _option(
        None, help="prototype (focal) loss weight; None keeps the model config's (0.5)"
    )
    focal_gamma: float | None = _option(None, help="focal-loss gamma; None keeps the model config's (2.5)")
    eval_batch_size: int = _option(1024, help="rows per head forward during evaluation and calibration")
    feature_batch_size: int = _option(
        32, help="images per backbone forward (feature extraction, fine-tuning evaluation)"
    )
    num_workers: int = _option(0, help="image-decoding worker processes")
    log_with: list[str] = _option(["csv"], help="Accelerate trackers", choices=TRACKERS)
    logging_steps: int = _option(50, help="log the training loss and learning rate every this many optimizer steps")
    save_total_limit: int = _option(2, help="epoch checkpoints kept (oldest deleted first)")
    checkpoint_every_steps: int | None = _option(
        None,
        help="also checkpoint every this many optimizer steps inside an epoch (useful when an epoch is long, "
        "as in end-to-end fine-tuning)",
    )
    resume: bool = _option(False, help="continue from the newest checkpoint in output_dir/checkpoints")
    overwrite_output_dir: bool = _option(
        False,
        help="let a fresh (not resumed) run delete an earlier run's checkpoints and best weights in output_dir; "
        "without it such a run refuses to start",
    )
    calibrate: bool = _option(True, help="fit the post-hoc temperatures on validation data")
    tune_thresholds: bool = _option(
        True, help="tune the CORAL decision thresholds on validation data (every grade stays reachable)"
    )
    min_grade_recall: float = _option(
        0.0,
        help="threshold tuning first lifts every grade's validation recall to at least this much (as far as the "
        "ordering of the cut-points allows), then maximises QWK; 0 maximises QWK alone",
    )
    ood_quantile: float = _option(
        0.99,
        help="the model's ood_threshold is this quantile of the validation images' OOD scores, so about "
        "1 - ood_quantile of in-distribution images are flagged as out of distribution",
    )
    progress: bool = _option(True, help="show progress bars (main process only); --no-progress hides every bar")

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            setattr(self, item.name, _coerce(getattr(self, item.name), _resolved_types()[item.name], item.name))
        positive = ("n_views", "num_epochs", "n_per_class", "gradient_accumulation_steps", "eval_batch_size")
        for name in (*positive, "feature_batch_size", "save_total_limit", "logging_steps", "tiny_image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("learning_rate", "max_grad_norm", "layerwise_lr_decay"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("weight_decay", "aug_rotation", "aug_brightness", "aug_contrast", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} may not be negative, got {getattr(self, name)}.")
        unknown_trackers = [name for name in self.log_with if name not in TRACKERS]
        if unknown_trackers:
            raise ValueError(f"log_with must list trackers among {TRACKERS}, got {unknown_trackers}.")
        if not 0 <= self.warmup_epochs <= self.num_epochs:
            raise ValueError(f"warmup_epochs must lie in [0, num_epochs], got {self.warmup_epochs}.")
        if not 0 < self.ood_quantile <= 1:
            raise ValueError(f"ood_quantile must lie in (0, 1], got {self.ood_quantile}.")
        if not 0 <= self.min_grade_recall <= 1:
            raise ValueError(f"min_grade_recall must lie in [0, 1], got {self.min_grade_recall}.")

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(default_cache_dir())

    def model_overrides(self) -> dict[str, Any]:
        """The model-config fields this run sets (those left at `None` keep the model's defaults)."""
        names = ("coral_loss_weight", "prototype_loss_weight", "focal_gamma")
        overrides = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        return {"freeze_backbone": self.freeze_backbone, **overrides}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainingConfig:
        """Read a YAML mapping of field names to values (a missing field keeps its default)."""
        try:
            values = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"Cannot read the training configuration {path}: {error}") from error
        if not isinstance(values, dict | None):
            raise ValueError(f"{path} must hold a mapping of TrainingConfig fields, got {type(values).__name__}.")
        return cls.from_dict(values or {}, origin=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "the configuration") -> TrainingConfig:
        """Build from a mapping (HfArgumentParser.parse_dict), refusing keys that are not fields."""
        known = [item.name for item in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            hints = [f"{name!r} (did you mean {close[0]!r}?)" for name in unknown if (close := _closest(name, known))]
            raise ValueError(
                f"Unknown TrainingConfig field(s) in {origin}: {unknown}. {' '.join(hints)} "
                f"Known fields: {', '.join(known)}."
            )
        (config,) = HfArgumentParser(cls).parse_dict(values)
        return config

    @classmethod
    def argument_parser(cls, prog: str | None = None) -> HfArgumentParser:
        """One flag per field (HfArgumentParser) plus `--config FILE.yaml`."""
        parser = HfArgumentParser(
            cls,
            prog=prog,
            description="Train, calibrate and export a RetinaScan model from a corpus folder. Every field below can "
            "also be set in a YAML file given with --config; flags override the file, which overrides the "
            "reference defaults shown.",
            allow_abbrev=False,
        )
        parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of TrainingConfig fields")
        return parser

    @classmethod
    def parse_args(cls, argv: Sequence[str] | None = None, prog: str | None = None) -> TrainingConfig:
        """Defaults, then `--config` (YAML), then every flag given. A bad flag exits 2 (argparse); a bad value in
        the file raises `ValueError` naming the field and the file."""
        argv = list(argv) if argv is not None else None
        parser = cls.argument_parser(prog)
        config_file = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        config_file.add_argument("--config")
        path = config_file.parse_known_args(argv)[0].config
        if path:
            parser.set_defaults(**cls.from_yaml(path).to_dict())  # flags still override the file
        config, _ = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
        return config


def _closest(name: str, known: list[str]) -> list[str]:
    return difflib.get_close_matches(name, known, n=1)


@functools.cache
def _resolved_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainingConfig)


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """`X | None` -> `(X, True)`; anything else -> `(kind, False)`."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        members = [member for member in typing.get_args(kind) if member is not type(None)]
        if len(members) == 1:
            return members[0], True
    return kind, False


def _coerce(value: Any, kind: Any, name: str) -> Any:
    """Check `value` against the field type, converting what YAML leaves as text (PyYAML reads `1e-4` as a
    string) and ints given for float fields; anything else is a clear error naming the field."""
    kind, optional = _unwrap_optional(kind)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} may not be empty.")
    if typing.get_origin(kind) is list:
        (element,) = typing.get_args(kind)
        if not isinstance(value, str | list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r}.")
        return [_coerce(item, element, name) for item in ([value] if isinstance(value, str) else value)]
    if typing.get_origin(kind) is Literal:
        if value not in typing.get_args(kind):
            raise ValueError(f"{name} must be one of {typing.get_args(kind)}, got {value!r}.")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}.")
    if kind in (int, float):
        try:
            number = kind(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be a number ({kind.__name__}), got {value!r}.") from error
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}.")
        if not math.isfinite(number):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
        return number
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"{name} must be text, got {value!r}.")
    return str(value)


__all__ = ["TINY_BACKBONE", "TrainingConfig", "default_cache_dir"]
