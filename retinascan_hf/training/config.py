"""`TrainingConfig`: every training hyper-parameter, typed, loaded from YAML and overridden by CLI flags.

Precedence is defaults < YAML file < command-line flags. The defaults are the reference configuration
(AdamW 1e-4 / 1e-4, 50 epochs, 2-epoch cosine warm-up, 8 images per grade per batch, clipping at 1.0), so a
YAML file or a flag only ever states what differs from it. Loss weights and the focal gamma default to
`None`, meaning "the model config's value": `RetinaScanConfig` stays the single source of truth for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

TINY_BACKBONE = "tiny"
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
Tracker = Literal["csv", "tensorboard"]


def default_cache_dir() -> str:
    """Shared across runs and output folders, so a second run on the same backbone finds the features."""
    from huggingface_hub.constants import HF_HOME

    return os.path.join(HF_HOME, "retinascan", "feature-cache")


@dataclass
class TrainingConfig:
    """Hyper-parameters and paths of one training run.

    Args:
        data: folder of the corpus `DatasetDict` (train/validation/test; `datasets.load_from_disk`).
        output_dir: receives `model/` (the finished model folder), `checkpoints/`, `logs/`, `metrics.json`.
        backbone: CLIP repo id or folder for `RetinaScanModel.from_backbone`, or `"tiny"` for a random
            tiny CLIP built offline (`tiny_image_size` px).
        tiny_image_size: input size of the `"tiny"` backbone.
        cache_dir: root of the frozen-backbone feature cache (one sub-folder per backbone+processor
            fingerprint); shared between runs by default.
        freeze_backbone: train only the heads on cached backbone features (fast path); `False` fine-tunes
            CLIP's image tower end to end.
        n_views: cached views per image: view 0 is the un-augmented picture, views 1.. are augmented.
            With an unfrozen backbone it bounds the augmentations drawn per image in the same way.
        aug_flip, aug_rotation, aug_brightness, aug_contrast: fundus-safe augmentation (random flips,
            rotation up to +-`aug_rotation` degrees, brightness and contrast factors in 1 +- value).
        num_epochs, learning_rate, weight_decay, warmup_epochs: AdamW with a cosine schedule after a linear
            warm-up of `warmup_epochs`.
        layerwise_lr_decay: with an unfrozen backbone, CLIP vision layer `i` of `L` learns at
            `learning_rate * decay ** (L - i)`; 1.0 disables it.
        n_per_class: images of each grade per batch (balanced sampler); batch size is 5x this.
        batches_per_epoch: batches per process per epoch; by default one pass over the training split.
        gradient_accumulation_steps, max_grad_norm: accumulation and gradient-norm clipping.
        mixed_precision: `"auto"` picks bf16 on GPUs that support it, else fp16 on GPUs, no autocast on CPU.
        cpu: force the CPU even where a GPU is present.
        seed: seeds model initialisation, batches, augmentations and dropout.
        coral_loss_weight, prototype_loss_weight, focal_gamma: loss settings; `None` keeps the model
            config's values (1.0, 0.5, 2.5).
        eval_batch_size: rows per head forward during evaluation and calibration.
        feature_batch_size: images per backbone forward (feature extraction, fine-tuning evaluation).
        num_workers: image-decoding worker processes.
        log_with: Accelerate trackers (`"csv"`, `"tensorboard"`).
        logging_steps: log the training loss and learning rate every this many optimizer steps.
        save_total_limit: epoch checkpoints kept (oldest deleted first).
        checkpoint_every_steps: also checkpoint every this many optimizer steps inside an epoch (useful when
            an epoch is long, as in end-to-end fine-tuning).
        resume: continue from the newest checkpoint in `output_dir/checkpoints`.
        overwrite_output_dir: let a fresh (not resumed) run delete an earlier run's checkpoints and best weights
            in `output_dir`; without it such a run refuses to start.
        calibrate: fit the post-hoc temperatures on validation data.
        tune_thresholds: tune the CORAL decision thresholds on validation data.
        ood_quantile: the model's `ood_threshold` is this quantile of the validation images' OOD scores, so
            about `1 - ood_quantile` of in-distribution images are flagged as out of distribution.
        progress: show progress bars (main process only).
    """

    data: str | None = None
    output_dir: str = "retinascan-output"
    backbone: str = "openai/clip-vit-base-patch16"
    tiny_image_size: int = 32
    cache_dir: str | None = None
    freeze_backbone: bool = True
    n_views: int = 4
    aug_flip: bool = True
    aug_rotation: float = 180.0
    aug_brightness: float = 0.2
    aug_contrast: float = 0.2
    num_epochs: int = 50
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    layerwise_lr_decay: float = 1.0
    n_per_class: int = 8
    batches_per_epoch: int | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: MixedPrecision = "auto"
    cpu: bool = False
    seed: int = 42
    coral_loss_weight: float | None = None
    prototype_loss_weight: float | None = None
    focal_gamma: float | None = None
    eval_batch_size: int = 1024
    feature_batch_size: int = 32
    num_workers: int = 0
    log_with: list[Tracker] = field(default_factory=lambda: ["csv"])
    logging_steps: int = 50
    save_total_limit: int = 2
    checkpoint_every_steps: int | None = None
    resume: bool = False
    overwrite_output_dir: bool = False
    calibrate: bool = True
    tune_thresholds: bool = True
    ood_quantile: float = 0.99
    progress: bool = True

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            setattr(self, item.name, _coerce(getattr(self, item.name), _resolved_types()[item.name], item.name))
        positive = ("n_views", "num_epochs", "n_per_class", "gradient_accumulation_steps", "eval_batch_size")
        for name in (*positive, "feature_batch_size", "save_total_limit", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("learning_rate", "max_grad_norm", "layerwise_lr_decay"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if not 0 < self.ood_quantile <= 1:
            raise ValueError(f"ood_quantile must lie in (0, 1], got {self.ood_quantile}.")
        if not 0 <= self.warmup_epochs <= self.num_epochs:
            raise ValueError(f"warmup_epochs must lie in [0, num_epochs], got {self.warmup_epochs}.")

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
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> TrainingConfig:
        """Read a YAML mapping of field names to values; `overrides` win over the file."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of TrainingConfig fields, got {type(values).__name__}.")
        return cls.from_dict({**values, **overrides}, origin=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "the configuration") -> TrainingConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainingConfig field(s) in {origin}: {unknown}. Known fields: {sorted(known)}.")
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add `--config` and one `--kebab-case` flag per field; unset flags stay `None` (= not given)."""
        parser.add_argument("--config", help="YAML file of TrainingConfig fields; flags override it.")
        types_ = _resolved_types()
        documented = _field_docs()
        for item in dataclasses.fields(cls):
            kind, _ = _unwrap_optional(types_[item.name])
            flag = "--" + item.name.replace("_", "-")
            default = item.default_factory() if item.default is dataclasses.MISSING else item.default
            help_text = f"{documented.get(item.name, '')} (default: {default})".replace("%", "%%")
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            elif typing.get_origin(kind) is list:
                (element,) = typing.get_args(kind)
                parser.add_argument(flag, nargs="*", default=None, help=help_text, **_choices_or_type(element))
            else:
                parser.add_argument(flag, default=None, help=help_text, **_choices_or_type(kind))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainingConfig:
        """Defaults, then `args.config` (YAML), then every flag that was given."""
        given = {
            item.name: getattr(args, item.name)
            for item in dataclasses.fields(cls)
            if getattr(args, item.name, None) is not None
        }
        if getattr(args, "config", None):
            return cls.from_yaml(args.config, **given)
        return cls.from_dict(given, origin="the command line")


def _field_docs() -> dict[str, str]:
    """Field name -> its `Args:` text in the `TrainingConfig` docstring (the `--help` of each flag), so the
    docstring stays the one place a field is documented. An entry may name several fields (`a, b: text`)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in (TrainingConfig.__doc__ or "").split("Args:", 1)[-1].splitlines():
        entry = re.match(r"^ {8}(\w+(?:, \w+)*): (.*)$", line)
        if entry:
            names = entry.group(1).split(", ")
            docs.update(dict.fromkeys(names, entry.group(2)))
        elif line.startswith(" " * 12) and names:
            docs.update({name: f"{docs[name]} {line.strip()}" for name in names})
    return {name: text.replace("`", "") for name, text in docs.items()}


def _resolved_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainingConfig)


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """`X | None` -> `(X, True)`; anything else -> `(kind, False)`."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        members = [member for member in typing.get_args(kind) if member is not type(None)]
        if len(members) == 1:
            return members[0], True
    return kind, False


def _choices_or_type(kind: Any) -> dict[str, Any]:
    if typing.get_origin(kind) is Literal:
        return {"choices": list(typing.get_args(kind))}
    return {"type": kind}


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
        items = [value] if isinstance(value, str) else list(value)
        return [_coerce(item, element, name) for item in items]
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
        return number
    return kind(value)


__all__ = ["TINY_BACKBONE", "TrainingConfig", "default_cache_dir"]
