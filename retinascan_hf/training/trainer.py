"""The Accelerate training loop: one code path for one CPU, one GPU and N GPUs (`accelerate launch`).

Accelerate owns the device, mixed precision, DDP, gradient accumulation and checkpoint state; the loop only
decides what a batch is (cached features or pixels: see `splits`), when to evaluate and what to keep. Every
process draws its own share of the balanced batches (the sampler shards itself by rank), DDP averages the
gradients, and only the main process writes files.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..modeling_retinascan import RetinaScanModel
from .checkpointing import (
    TrainingProgress,
    list_checkpoints,
    load_checkpoint,
    save_best_weights,
    save_checkpoint,
)
from .config import TrainingConfig
from .evaluation import head_outputs
from .metrics import quadratic_weighted_kappa
from .optim import build_optimizer, build_scheduler, freeze_unused_towers
from .sampler import BalancedGradeSampler
from .splits import CachedSplit, TrainingSplit, epoch_plan
from .tracking import CSVTracker

RUN_NAME = "retinascan"


def resolve_mixed_precision(config: TrainingConfig) -> str:
    """`"auto"` -> bf16 on GPUs that support it, fp16 on other GPUs, none on CPU (where autocast is slower)."""
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if config.cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """The run's Accelerator: precision, accumulation and trackers (logs under `output_dir/logs`)."""
    logs = Path(config.output_dir) / "logs"
    trackers = [CSVTracker(RUN_NAME, logs) if name == "csv" else name for name in config.log_with]
    return Accelerator(
        cpu=config.cpu,
        mixed_precision=resolve_mixed_precision(config),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=trackers or None,
        project_dir=str(logs),
    )


def batches_per_epoch(config: TrainingConfig, train_size: int, num_processes: int, num_labels: int) -> int:
    """Batches per process per epoch: one pass over the training split by default, rounded down to a
    multiple of the accumulation steps so that every epoch ends on an optimizer step (a checkpoint never
    holds half-accumulated gradients)."""
    batch_size = config.n_per_class * num_labels
    wanted = config.batches_per_epoch or max(1, train_size // (batch_size * num_processes))
    accumulation = config.gradient_accumulation_steps
    return max(accumulation, wanted // accumulation * accumulation)


class RetinaScanTrainer:
    """Trains a `RetinaScanModel` on a train split, selecting the best epoch by validation QWK.

    Args:
        model: the model to train (unprepared). With `config.freeze_backbone` only its heads train, on the
            cached features of `train`; otherwise its image tower trains too, on pixels.
        config: hyper-parameters; `output_dir` receives `checkpoints/`, `best/` and `logs/`.
        train, validation: the splits (`CachedSplit` or `ImageSplit`).
        accelerator: from [`make_accelerator`].

    Attributes:
        model, optimizer, scheduler: as prepared by Accelerate.
        sampler: this process's balanced batch sampler.
        progress: loop position and best validation QWK (checkpointed).
        history: one dict of metrics per epoch trained by this instance.
    """

    def __init__(
        self,
        model: RetinaScanModel,
        config: TrainingConfig,
        train: TrainingSplit,
        validation: TrainingSplit,
        accelerator: Accelerator,
    ):
        self.config = config
        self.accelerator = accelerator
        self.train_split, self.validation_split = train, validation
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.best_dir = self.output_dir / "best"
        if not model.config.freeze_backbone:
            freeze_unused_towers(model)
        for split in (train, validation):
            if isinstance(split, CachedSplit):
                split.to(accelerator.device)
        self.sampler = BalancedGradeSampler(
            train.grades.tolist(),
            n_per_class=config.n_per_class,
            num_classes=model.config.num_labels,
            num_batches=batches_per_epoch(config, len(train), accelerator.num_processes, model.config.num_labels),
            seed=config.seed,
            num_replicas=accelerator.num_processes,
            rank=accelerator.process_index,
        )
        self.steps_per_epoch = len(self.sampler) // config.gradient_accumulation_steps
        self.trainable_parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = build_optimizer(model, config)
        scheduler = build_scheduler(optimizer, config, self.steps_per_epoch, accelerator.num_processes)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.progress = TrainingProgress()
        accelerator.register_for_checkpointing(self.sampler, self.progress)
        self.history: list[dict[str, float]] = []
        accelerator.init_trackers(RUN_NAME, config=_loggable(config.to_dict()))

    @property
    def unwrapped_model(self) -> RetinaScanModel:
        return self.accelerator.unwrap_model(self.model)

    def resume(self) -> Path | None:
        """Load the newest complete checkpoint, if any; return its folder."""
        checkpoints = list_checkpoints(self.checkpoint_dir)
        if not checkpoints:
            self.accelerator.print(f"No checkpoint under {self.checkpoint_dir}: starting from scratch.")
            return None
        load_checkpoint(self.accelerator, checkpoints[-1])
        self.accelerator.print(
            f"Resumed from {checkpoints[-1]}: epoch {self.progress.epoch}, batch {self.progress.batch_in_epoch}, "
            f"step {self.progress.global_step}."
        )
        return checkpoints[-1]

    def train(self) -> TrainingProgress:
        """Train up to `config.num_epochs` (continuing from the newest checkpoint with `config.resume`)."""
        config, progress = self.config, self.progress
        if config.resume:
            self.resume()
        else:
            self._claim_output_dir()
        batches = len(self.sampler)
        bar = tqdm(
            total=batches * config.num_epochs,
            initial=progress.epoch * batches + progress.batch_in_epoch,
            desc="training",
            unit="batch",
            disable=not (config.progress and self.accelerator.is_local_main_process),
        )
        while progress.epoch < config.num_epochs:
            started = time.perf_counter()
            losses = self._train_epoch(bar)
            metrics = {"train/loss": losses, **self.evaluate(), "epoch": progress.epoch + 1}
            metrics["train/epoch_seconds"] = time.perf_counter() - started
            self._keep_if_best(metrics["val/qwk"])
            progress.epoch += 1
            progress.batch_in_epoch = 0
            metrics["val/best_qwk"] = progress.best_qwk
            self.history.append(metrics)
            self.accelerator.log(metrics, step=progress.global_step)
            bar.set_postfix(loss=f"{losses:.3f}", val_qwk=f"{metrics['val/qwk']:.3f}")
            save_checkpoint(self.accelerator, self.checkpoint_dir, progress.global_step, config.save_total_limit)
        bar.close()
        return progress

    def _claim_output_dir(self) -> None:
        """A fresh run must not mix with an earlier run's checkpoints or best weights: refuse, or with
        `overwrite_output_dir` delete them (main process) first."""
        stale = [path for path in (self.checkpoint_dir, self.best_dir) if path.exists()]
        if stale and not self.config.overwrite_output_dir:
            raise FileExistsError(
                f"{self.output_dir} holds an earlier run ({', '.join(path.name for path in stale)}): pass --resume to "
                "continue it, --overwrite-output-dir to replace it, or choose another --output-dir."
            )
        if stale and self.accelerator.is_main_process:
            for path in stale:
                shutil.rmtree(path)
        self.accelerator.wait_for_everyone()

    def _train_epoch(self, bar: tqdm) -> float:
        """One epoch (or its remainder after a mid-epoch resume); returns the mean loss over all processes."""
        config, progress, accelerator = self.config, self.progress, self.accelerator
        plan = epoch_plan(
            self.sampler,
            epoch=progress.epoch,
            seed=config.seed,
            n_views=config.n_views,
            rank=accelerator.process_index,
            start=progress.batch_in_epoch,
        )
        self.model.train()
        total, count = torch.zeros((), device=accelerator.device), 0
        for batch in self.train_split.batches(plan):
            loss = self._step(batch)
            total += loss
            count += 1
            progress.batch_in_epoch += 1
            bar.update(1)
            if not accelerator.sync_gradients:
                continue
            progress.global_step += 1
            if progress.global_step % config.logging_steps == 0:
                accelerator.log(
                    {"train/step_loss": float(loss), "train/lr": self.scheduler.get_last_lr()[0]},
                    step=progress.global_step,
                )
            every = config.checkpoint_every_steps
            if every and progress.global_step % every == 0 and progress.batch_in_epoch < len(self.sampler):
                save_checkpoint(accelerator, self.checkpoint_dir, progress.global_step, config.save_total_limit)
        mean = accelerator.reduce(total / max(count, 1), reduction="mean")
        return float(mean)

    def _step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            loss = self.model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.trainable_parameters, self.config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def evaluate(self) -> dict[str, float]:
        """Validation loss, QWK and accuracy of the ordinal decision, and QWK of the prototype decision."""
        model = self.unwrapped_model
        grades = self.validation_split.grades.cpu()
        features = self.validation_split.view_features(model)
        outputs = head_outputs(model, features, self.config.eval_batch_size, labels=grades)
        predicted = outputs.predicted_grade.numpy()
        num_labels = model.config.num_labels
        return {
            "val/loss": outputs.loss,
            "val/qwk": quadratic_weighted_kappa(grades.numpy(), predicted, num_labels),
            "val/accuracy": float((predicted == grades.numpy()).mean()),
            "val/prototype_qwk": quadratic_weighted_kappa(
                grades.numpy(), outputs.prototype_logits.argmax(-1).numpy(), num_labels
            ),
        }

    def _keep_if_best(self, qwk: float) -> None:
        """Save the trainable weights to `best/` when validation QWK improves (every process agrees on it:
        they evaluate the same weights on the same data)."""
        if math.isnan(qwk) or qwk <= self.progress.best_qwk:
            return
        self.progress.best_qwk, self.progress.best_epoch = qwk, self.progress.epoch + 1
        if self.accelerator.is_main_process:
            metadata = {"epoch": str(self.progress.best_epoch), "val_qwk": f"{qwk:.6f}"}
            save_best_weights(self.unwrapped_model, self.best_dir, metadata)
        self.accelerator.wait_for_everyone()


def _loggable(values: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as scalars or text: what TensorBoard's hparams accept."""
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in values.items()}


__all__ = ["RUN_NAME", "RetinaScanTrainer", "batches_per_epoch", "make_accelerator", "resolve_mixed_precision"]
