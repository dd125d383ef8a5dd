"""AdamW parameter groups (with layer-wise learning-rate decay for fine-tuning) and the warm-up cosine schedule."""

from __future__ import annotations

import re

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_cosine_schedule_with_warmup

from ..modeling_retinascan import RetinaScanModel
from .config import TrainingConfig

_ENCODER_LAYER = re.compile(r"^clip\.vision_model\.encoder\.layers\.(\d+)\.")
_VISION_INPUT = ("clip.vision_model.embeddings.", "clip.vision_model.pre_layrnorm.")


def freeze_unused_towers(model: RetinaScanModel) -> None:
    """Freeze what image training never reaches: CLIP's text tower, text projection and logit scale.

    Grading uses the text tower only to compute the prototypes, once, into a buffer. Left trainable while the
    image tower is fine-tuned, these parameters would get no gradient, and DDP refuses unused parameters.
    """
    for module in (model.clip.text_model, model.clip.text_projection):
        if module is not None:  # a model released without its text tower (config.text_tower=False)
            module.requires_grad_(False)
    model.clip.logit_scale.requires_grad_(False)


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 for patch/position embeddings, `i + 1` for encoder layer
    `i`, `num_layers + 1` for everything above the encoder (post-norm, projection and the heads)."""
    match = _ENCODER_LAYER.match(name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith(_VISION_INPUT):
        return 0
    return num_layers + 1


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether torch has a fused AdamW kernel for `device`'s type (CPU and CUDA since torch 2.4)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the helper: only the long-standing kernels
        return device.type in ("cpu", "cuda")
    return device.type in _get_fused_kernels_supported_devices()


def adamw_implementation(config: TrainingConfig, device: torch.device) -> dict[str, bool]:
    """`torch.optim.AdamW` keywords for `config.optimizer_implementation` on `device`.

    Why fused by default: AdamW's update is a dozen element-wise operations per parameter; `foreach` runs each
    once over all parameters, `fused` runs the whole update in one pass over memory. On the small head step it
    is the largest single saving (benchmarks/head_training_profile.txt). Asking for `fused` on a device without
    the kernel is an error rather than a silent fallback.
    """
    choice = config.optimizer_implementation
    if choice == "auto":
        choice = "fused" if fused_adamw_supported(device) else "foreach"
    if choice == "fused" and not fused_adamw_supported(device):
        raise ValueError(
            f"optimizer_implementation='fused' but torch {torch.__version__} has no fused AdamW for "
            f"{device.type}: use 'auto' or 'foreach'."
        )
    return {"fused": choice == "fused", "foreach": choice == "foreach"}


def build_optimizer(
    model: RetinaScanModel, config: TrainingConfig, device: torch.device | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with the kernel chosen by [`adamw_implementation`] for `device` (where
    training runs; default: the parameters' device). With layer-wise decay `d`, a parameter at depth `l` of
    `L + 1` learns at `learning_rate * d ** (L + 1 - l)`: the pretrained early layers move least."""
    num_layers = model.config.backbone_config.vision_config.num_hidden_layers
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            depth = layer_depth(name, num_layers) if config.layerwise_lr_decay != 1.0 else num_layers + 1
            groups.setdefault(depth, []).append(parameter)
    if not groups:
        raise ValueError("The model has no trainable parameters.")
    param_groups = [
        {"params": params, "lr": config.learning_rate * config.layerwise_lr_decay ** (num_layers + 1 - depth)}
        for depth, params in sorted(groups.items())
    ]
    device = device if device is not None else param_groups[0]["params"][0].device
    return torch.optim.AdamW(
        param_groups,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        **adamw_implementation(config, device),
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, steps_per_epoch: int, num_processes: int
) -> LambdaLR:
    """Linear warm-up over `warmup_epochs`, then cosine decay to zero at the last step.

    Counts are multiplied by `num_processes` because Accelerate's prepared scheduler advances once per
    process for every optimizer step (it assumes each process sees 1/N of the batches, as here).
    """
    total = steps_per_epoch * config.num_epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return get_cosine_schedule_with_warmup(optimizer, warmup * num_processes, total * num_processes)


__all__ = [
    "adamw_implementation",
    "build_optimizer",
    "build_scheduler",
    "freeze_unused_towers",
    "fused_adamw_supported",
    "layer_depth",
]
