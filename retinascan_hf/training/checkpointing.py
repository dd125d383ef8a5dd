"""Resumable, crash-safe checkpoints: `accelerator.save_state` into a staging folder, then one rename.

A checkpoint holds what training changes and nothing else: the trainable parameters and persistent buffers
(a frozen ViT-B/16 tower is 600 MB that never changes; re-writing it every epoch would cost more than the
epoch), the optimizer, scheduler, gradient scaler and every process's RNG states (Accelerate), the balanced
sampler's seed and epoch, the loop position (`TrainingProgress`), and the metrics of every completed epoch
(`history.json`, so that `metrics.json` after a resume holds the whole run). Folder names sort by optimizer step,
`checkpoints/step-00001234`; a folder that exists under its final name is complete, because it only got that
name by a rename after every process finished writing.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic_io import atomic_directory

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")
WEIGHTS_NAME = "model.safetensors"  # what Accelerate's save_state names the first model's weights
BEST_WEIGHTS_NAME = "trainable.safetensors"
HISTORY_NAME = "history.json"


@dataclass
class TrainingProgress:
    """Where the loop stands; registered with Accelerate so `save_state`/`load_state` carry it.

    Attributes:
        epoch: the epoch being trained (the number of completed epochs, when `batch_in_epoch` is 0).
        batch_in_epoch: batches of `epoch` already trained (non-zero only for mid-epoch checkpoints).
        global_step: optimizer steps taken.
        best_qwk, best_epoch: the best validation QWK so far and the epoch that reached it.
        epoch_loss_sum, epoch_loss_batches: training loss summed over the batches of `epoch` trained before a
            mid-epoch checkpoint (all processes), and their number.
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best_qwk: float = float("-inf")
    best_epoch: int = -1
    epoch_loss_sum: float = 0.0
    epoch_loss_batches: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters and persistent buffers of `model`: what training can change."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in model.state_dict().items() if name in trainable | buffers}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a `trainable_state` into `model`, refusing one that lacks a trainable tensor or has extra ones."""
    expected = set(trainable_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"{origin} does not match the model's trainable state: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            "Was it written by a run with a different backbone or freeze_backbone setting?"
        )
    model.load_state_dict(state, strict=False)


def register_trainable_checkpointing(accelerator: Accelerator) -> None:
    """Make `save_state`/`load_state` store only the trainable state of each prepared model.

    Both hooks work on the unwrapped model, so a checkpoint's tensor names do not depend on whether it was
    written by one process or by N (DDP's `module.` prefix) and a run can resume on a different device count.
    """

    def save_hook(models: list[nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
        for index, model in enumerate(models):
            weights[index] = trainable_state(accelerator.unwrap_model(model))

    def load_hook(models: list[nn.Module], input_dir: str) -> None:
        for index, model in enumerate(models):
            name = WEIGHTS_NAME if index == 0 else WEIGHTS_NAME.replace(".safetensors", f"_{index}.safetensors")
            path = Path(input_dir) / name
            state = load_file(str(path), device=str(accelerator.device))
            load_trainable_state(accelerator.unwrap_model(model), state, str(path))
        models.clear()  # loaded here: keep Accelerate from loading them again, strictly, as full models

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.match(path.name))


def save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    global_step: int,
    keep: int,
    history: list[dict[str, float]] | None = None,
) -> Path:
    """`accelerator.save_state` (all processes write their RNG state) and the epoch `history` (JSON) into a
    staging folder that the main process renames into place; then only the newest `keep` checkpoints are kept."""
    final = root / f"step-{global_step:08d}"
    staging = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / HISTORY_NAME).write_text(json.dumps(history or [], indent=1))
        if final.exists():  # the same step, re-reached after a resume: identical content
            shutil.rmtree(final)
        staging.rename(final)
        for stale in list_checkpoints(root)[:-keep]:
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return final


def load_history(checkpoint: Path) -> list[dict[str, float]]:
    """The epoch metrics saved with a checkpoint: a JSON list of `{name: number}`, checked as it is read.
    (A checkpoint written before histories were saved has none: an empty history.)"""
    path = checkpoint / HISTORY_NAME
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text())  # NaN (an undefined QWK) round-trips as in json.dumps
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable epoch history: {error}") from error
    if not isinstance(history, list) or not all(
        isinstance(epoch, dict)
        and all(isinstance(value, int | float) and not isinstance(value, bool) for value in epoch.values())
        for epoch in history
    ):
        raise ValueError(f"{path} must hold a list of {{metric: number}} objects, one per epoch.")
    return history


def save_best_weights(model: nn.Module, directory: Path, metadata: dict[str, str]) -> None:
    """Replace `directory` atomically with the model's trainable state (main process only)."""
    with atomic_directory(directory, marker=BEST_WEIGHTS_NAME) as staging:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in trainable_state(model).items()}
        save_file(state, str(staging / BEST_WEIGHTS_NAME), metadata=metadata)


def load_best_weights(model: nn.Module, directory: Path) -> bool:
    """Load weights saved by `save_best_weights`; `False` when there are none."""
    path = directory / BEST_WEIGHTS_NAME
    if not path.is_file():
        return False
    device = next(model.parameters()).device
    load_trainable_state(model, load_file(str(path), device=str(device)), str(path))
    return True


__all__ = [
    "TrainingProgress",
    "list_checkpoints",
    "load_best_weights",
    "load_history",
    "load_trainable_state",
    "register_trainable_checkpointing",
    "save_best_weights",
    "save_checkpoint",
    "trainable_state",
]
