"""Resumable, crash-safe checkpoints that hold only safetensors and JSON, so resuming never unpickles.

A checkpoint holds what training changes and nothing else: the trainable parameters and persistent buffers
(a frozen ViT-B/16 tower is 600 MB that never changes; re-writing it every epoch would cost more than the
epoch), the optimizer, scheduler and gradient-scaler states, every process's RNG states and Accelerate's step
counter, and the objects registered with `accelerator.register_for_checkpointing` (the balanced sampler's seed
and epoch, the loop position `TrainingProgress`), and the metrics of every completed epoch (`history.json`, so
that `metrics.json` after a resume holds the whole run). It saves what `accelerator.save_state` would, but
Accelerate pickles custom objects and RNG states (`custom_checkpoint_0.pkl` is read back with
`weights_only=False`: a tampered file runs code on `--resume`), so every piece is written here as JSON plus
safetensors (`state_files`), and nothing in a checkpoint is ever unpickled.

Folder names sort by optimizer step, `checkpoints/step-00001234`. Every process writes into one staging
folder that the main process renames into place after a manifest of the files (`atomic_io`); loading checks
the folder holds exactly those files, so a planted `*.pkl` (or a checkpoint of the older pickle format) is
refused by name before anything is read.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic_io import (
    atomic_directory,
    discard_staging,
    ownership_problem,
    recover_directory,
    remove_written,
    write_manifest,
)
from .state_files import StateFileError, load_state, save_state

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")
CHECKPOINT_KIND = "checkpoint"
BEST_WEIGHTS_NAME = "trainable.safetensors"
HISTORY_NAME = "history.json"
_UNSUPPORTED = (DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM, DistributedType.XLA)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: not ours, tampered, corrupt, or for another model."""


@dataclass
class TrainingProgress:
    """Where the loop stands; registered with `accelerator.register_for_checkpointing`, so checkpoints carry it.

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


def _saveable(model: nn.Module) -> dict[str, torch.Tensor]:
    """`trainable_state` as contiguous CPU tensors, what `save_file` writes."""
    return {name: tensor.detach().cpu().contiguous() for name, tensor in trainable_state(model).items()}


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


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.match(path.name))


def _read_tensors(path: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; an error naming the file when it is missing, corrupt or not safetensors."""
    try:
        return load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}).") from error


def _indexed(name: str, index: int) -> str:
    """Accelerate's naming: `optimizer`, `optimizer_1`, ... for the 1st, 2nd, ... prepared object."""
    return name if index == 0 else f"{name}_{index}"


def _check_supported(accelerator: Accelerator) -> None:
    if accelerator.distributed_type in _UNSUPPORTED:
        raise NotImplementedError(
            f"Checkpoints support single-process and DDP runs, not {accelerator.distributed_type.value} "
            "(its sharded states need its own format)."
        )


def _write_rng_state(accelerator: Accelerator, directory: Path) -> None:
    """This process's RNG states and Accelerate's step counter (gradient accumulation position)."""
    state: dict[str, Any] = {
        "step": accelerator.step,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    save_state(state, directory, f"rng_state_{accelerator.process_index}")


def _restore_rng_state(accelerator: Accelerator, directory: Path) -> None:
    name = f"rng_state_{accelerator.process_index}"
    if not (directory / f"{name}.json").is_file():
        logger.warning(
            f"{directory} holds no RNG state for process {accelerator.process_index} (it was written by fewer "
            "processes): training continues, but not bit-identically to an uninterrupted run.",
            main_process_only=False,
        )
        return
    state = load_state(directory, name)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    accelerator.step = int(state["step"])


def _write_main_state(accelerator: Accelerator, directory: Path) -> None:
    """Everything but the RNG states, which every process writes for itself.

    The prepared objects are the ones `accelerator.save_state` itself saves (`_models`, `_optimizers`,
    `_schedulers`, `_custom_objects`). Models are unwrapped, so tensor names do not depend on the number of
    processes that wrote a checkpoint and a run can resume on a different device count.
    """
    for index, model in enumerate(accelerator._models):
        path = directory / f"{_indexed('model', index)}.safetensors"
        save_file(_saveable(accelerator.unwrap_model(model)), str(path))
    for index, optimizer in enumerate(accelerator._optimizers):
        save_state(optimizer.state_dict(), directory, _indexed("optimizer", index))
    for index, scheduler in enumerate(accelerator._schedulers):
        save_state(scheduler.state_dict(), directory, _indexed("scheduler", index))
    for index, registered in enumerate(accelerator._custom_objects):
        save_state(registered.state_dict(), directory, f"custom_{index}")
    if accelerator.scaler is not None:
        save_state(accelerator.scaler.state_dict(), directory, "scaler")


def save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    global_step: int,
    keep: int,
    history: list[dict[str, float]] | None = None,
) -> Path:
    """Save the training state (what `accelerator.save_state` would, without pickle) and the epoch `history`
    (JSON) as `root/step-<step>`.

    All processes write into a staging folder (each its RNG state, the main process the rest) that the main
    process renames into place; then only the newest `keep` checkpoints are kept. Old checkpoints are deleted
    file by file from their manifest, so nothing we did not write is ever deleted.
    """
    _check_supported(accelerator)
    final = root / f"step-{global_step:08d}"
    staging = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        discard_staging(staging)  # left by a run killed while saving this same step
        staging.mkdir()
        write_manifest(staging, CHECKPOINT_KIND, complete=False)
    accelerator.wait_for_everyone()
    _write_rng_state(accelerator, staging)
    if accelerator.is_main_process:
        _write_main_state(accelerator, staging)
        (staging / HISTORY_NAME).write_text(json.dumps(history or [], indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(staging, CHECKPOINT_KIND)
        if final.exists() and not remove_written(final):  # the same step, re-reached after a resume
            raise CheckpointError(f"Cannot replace {final}: it holds files retinascan did not write.")
        os.rename(staging, final)
        for stale in list_checkpoints(root)[:-keep]:
            remove_written(stale)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, directory: Path) -> None:
    """Restore what [`save_checkpoint`] wrote into the prepared objects and registered objects of `accelerator`.

    Raises:
        CheckpointError: naming the folder or file, when the folder holds anything but the files its manifest
            lists (a planted pickle, an older pickle-format checkpoint), or a file is corrupt or does not fit
            the model. Nothing is unpickled at any point.
    """
    _check_supported(accelerator)
    problem = ownership_problem(directory, CHECKPOINT_KIND)
    if problem:
        raise CheckpointError(
            f"Refusing to resume from {directory}: {problem}. A checkpoint holds only the safetensors and JSON "
            "files retinascan wrote and listed in its manifest; pickles (.pkl, .bin, .pt) are never loaded because "
            "unpickling runs code. A checkpoint of an older version (Accelerate's pickle format) cannot be "
            "resumed: start afresh with --overwrite-output-dir."
        )
    try:
        for index, model in enumerate(accelerator._models):
            path = directory / f"{_indexed('model', index)}.safetensors"
            load_trainable_state(accelerator.unwrap_model(model), _read_tensors(path, accelerator.device), str(path))
        for index, optimizer in enumerate(accelerator._optimizers):
            optimizer.load_state_dict(load_state(directory, _indexed("optimizer", index)))
        for index, scheduler in enumerate(accelerator._schedulers):
            scheduler.load_state_dict(load_state(directory, _indexed("scheduler", index)))
        for index, registered in enumerate(accelerator._custom_objects):
            registered.load_state_dict(load_state(directory, f"custom_{index}"))
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(load_state(directory, "scaler"))
        _restore_rng_state(accelerator, directory)
    except (StateFileError, OSError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"Cannot resume from {directory}: {error}") from error


def load_history(checkpoint: Path) -> list[dict[str, float]]:
    """The epoch metrics saved with a checkpoint: a JSON list of `{name: number}`, checked as it is read.
    (A checkpoint written before histories were saved has none: an empty history.)"""
    path = checkpoint / HISTORY_NAME
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text())  # NaN (an undefined QWK) round-trips as in json.dumps
    except (OSError, ValueError, RecursionError) as error:
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
        save_file(_saveable(model), str(staging / BEST_WEIGHTS_NAME), metadata=metadata)


def load_best_weights(model: nn.Module, directory: Path) -> bool:
    """Load weights saved by `save_best_weights`; `False` when there are none."""
    recover_directory(directory)  # a kill while replacing them left them aside
    path = directory / BEST_WEIGHTS_NAME
    if not path.is_file():
        return False
    load_trainable_state(model, _read_tensors(path, next(model.parameters()).device), str(path))
    return True


__all__ = [
    "CHECKPOINT_KIND",
    "CheckpointError",
    "TrainingProgress",
    "list_checkpoints",
    "load_best_weights",
    "load_checkpoint",
    "load_history",
    "load_trainable_state",
    "save_best_weights",
    "save_checkpoint",
    "trainable_state",
]
