"""The Accelerate training loop: one code path for one CPU, one GPU and N GPUs (`accelerate launch`).

Accelerate owns the device, mixed precision, DDP, gradient accumulation and checkpoint state; the loop only
decides what a batch is (cached features or pixels: see `splits`), when to evaluate and what to keep. Every
process draws its own share of the balanced batches (the sampler shards itself by rank), DDP averages the
gradients, and only the main process writes files.

Launching N processes must give one run of N processes, never N independent runs racing on one output
folder: `make_accelerator` picks the CPU (gloo) backend when there is no GPU, and refuses to start when the
launcher asked for more processes than Accelerate sees (see `check_process_count`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from ..metrics import quadratic_weighted_kappa
from ..modeling_retinascan import RetinaScanModel
from .checkpointing import (
    TrainingProgress,
    list_checkpoints,
    load_checkpoint,
    load_history,
    save_best_weights,
    save_checkpoint,
)
from .config import TrainingConfig
from .evaluation import head_outputs
from .optim import build_optimizer, build_scheduler, freeze_unused_towers
from .sampler import BalancedGradeSampler
from .splits import CachedSplit, TrainingSplit, epoch_plan
from .tracking import CSVTracker

RUN_NAME = "retinascan"
WORKING_LAUNCH = (
    "launch with `torchrun --nproc_per_node N scripts/train.py ...` or `accelerate launch --multi_gpu "
    "--num_processes N scripts/train.py ...` (both run gloo on CPUs; README: Training on several processes)"
)

logger = get_logger(__name__)


def resolve_mixed_precision(config: TrainingConfig) -> str:
    """`"auto"` -> bf16 on GPUs that support it, fp16 on other GPUs, none on CPU (where autocast is slower)."""
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if config.cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def use_cpu(config: TrainingConfig) -> bool:
    """`--cpu`, or no accelerator device at all. Accelerate only picks its multi-CPU (gloo) backend when told
    `cpu=True`; without it, N processes started by `torchrun` on a CPU machine each train alone."""
    device_api = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    has_device = device_api.is_available() if device_api is not None else torch.cuda.is_available()
    return config.cpu or not has_device


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """The run's Accelerator: device, precision, accumulation and trackers (logs under `output_dir/logs`), after
    checking that it sees every process the launcher started."""
    check_launcher_request()
    logs = Path(config.output_dir) / "logs"
    trackers = [CSVTracker(RUN_NAME, logs) if name == "csv" else name for name in config.log_with]
    accelerator = Accelerator(
        cpu=use_cpu(config),
        dynamo_backend="inductor" if config.torch_compile and compile_available() else "no",
        mixed_precision=resolve_mixed_precision(config),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=trackers or None,
        project_dir=str(logs),
    )
    check_process_count(accelerator.num_processes)
    return accelerator


@functools.cache
def compile_available() -> bool:
    """Whether `torch.compile` (inductor) works here: compiles and runs a one-line function once per process.

    Compiling fails late, at the first call (no C++ compiler for CPU kernels, an unsupported Python or platform);
    finding that out in the middle of the first training step would lose the run, so `torch_compile` asks first
    and trains eagerly, with a warning, where compiling is unavailable.
    """
    try:
        doubled = torch.compile(lambda tensor: tensor * 2)(torch.ones(2))
        return bool(torch.equal(doubled, torch.full((2,), 2.0)))
    except Exception as error:  # any failure means "not here"; the reason is logged
        logger.warning("torch_compile was asked for but torch.compile fails here (%s): training eagerly.", error)
        return False


# Back ends on which Accelerate's optimizer wrapper, without a loss scaler, only forwards `step` and `zero_grad`
# (and `clip_grad_norm_` only calls torch's): DDP averages gradients during backward.
_PLAIN_STEP_BACKENDS = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def plain_optimizer(accelerator: Accelerator, prepared: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside Accelerate's wrapper `prepared`, where stepping it directly is the same update;
    `None` where the wrapper matters (fp16 loss scaling, DeepSpeed, FSDP, XLA).

    Why bypass it: each `step` of the wrapper looks up the optional `lomo_optim` package through importlib (twice,
    uncached, in accelerate 1.x) and each `zero_grad` inspects the optimizer's signature. That is ~0.3 ms of a
    ~2 ms step of head training on cached features (profiled: `benchmarks/head_training_profile.txt`), for a step
    whose work is ~1.5 ms.
    """
    if accelerator.scaler is not None or accelerator.distributed_type not in _PLAIN_STEP_BACKENDS:
        return None
    return getattr(prepared, "optimizer", prepared)


def check_process_count(num_processes: int) -> None:
    """Refuse a launch whose `WORLD_SIZE` (set by torchrun and `accelerate launch --multi_gpu`) differs from the
    processes Accelerate sees: each process would train alone and all would race on the output folder."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and world_size != num_processes:  # MPI launches set no WORLD_SIZE: nothing to compare
        raise RuntimeError(
            f"The launcher started {world_size} processes (WORLD_SIZE={world_size}) but Accelerate sees "
            f"{num_processes}: a device backend for {world_size} processes is missing. On CPUs pass --cpu; or "
            f"{WORKING_LAUNCH}."
        )


def check_launcher_request(launcher_arguments: Sequence[str] | None = None) -> None:
    """Refuse `accelerate launch --cpu --num_processes N` (N > 1) without MPI: Accelerate then starts ONE
    process, sets no WORLD_SIZE, and would exit 0 after a silently single-process run. The only trace of the
    request is the launcher's command line (`launcher_arguments`: by default the parent process's)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in os.environ:
        return
    if launcher_arguments is None:
        try:
            parent = psutil.Process().parent()
            launcher_arguments = parent.cmdline() if parent is not None else []
        except psutil.Error:  # the parent is gone or hidden: nothing to check
            return
    requested = _num_processes_argument(launcher_arguments)
    if requested > 1:
        raise RuntimeError(
            f"`accelerate launch --cpu --num_processes {requested}` started one process (without MPI it cannot "
            f"start more); {WORKING_LAUNCH}."
        )


def _num_processes_argument(arguments: Sequence[str]) -> int:
    """The value of `--num_processes` / `--num-processes` in a command line (`N` or `=N`), else 1."""
    for index, argument in enumerate(arguments):
        match = re.fullmatch(r"--num[_-]processes(?:=(\d+))?", argument)
        if match:
            value = match.group(1) or (arguments[index + 1] if index + 1 < len(arguments) else "1")
            return int(value) if value.isdigit() else 1
    return 1


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
        history: one dict of metrics per completed epoch, including those before a resume (checkpointed).
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
        optimizer = build_optimizer(model, config, accelerator.device)
        scheduler = build_scheduler(optimizer, config, self.steps_per_epoch, accelerator.num_processes)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self._plain_optimizer = plain_optimizer(accelerator, self.optimizer)
        self.progress = TrainingProgress()
        accelerator.register_for_checkpointing(self.sampler, self.progress)
        self.history: list[dict[str, float]] = []
        accelerator.init_trackers(RUN_NAME, config=_loggable(config.to_dict()))

    @property
    def unwrapped_model(self) -> RetinaScanModel:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def resume(self) -> Path | None:
        """Load the newest complete checkpoint, if any; return its folder."""
        checkpoints = list_checkpoints(self.checkpoint_dir)
        if not checkpoints:
            logger.info("No checkpoint under %s: starting from scratch.", self.checkpoint_dir)
            return None
        load_checkpoint(self.accelerator, checkpoints[-1])
        self.history = load_history(checkpoints[-1])
        logger.info(
            "Resumed from %s: epoch %d, batch %d, step %d.",
            checkpoints[-1],
            self.progress.epoch,
            self.progress.batch_in_epoch,
            self.progress.global_step,
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
            self._save_checkpoint()
        bar.close()
        return progress

    def _save_checkpoint(self) -> None:
        step, keep = self.progress.global_step, self.config.save_total_limit
        save_checkpoint(self.accelerator, self.checkpoint_dir, step, keep, history=self.history)

    def weight_checksums(self) -> list[float]:
        """One checksum of the trainable weights per process. DDP keeps the processes' weights identical; if
        they ever differ, the exported model (main process) would not be the one the others evaluated, so that
        is an error, not a number to report."""
        local = torch.stack([parameter.detach().double().sum() for parameter in self.trainable_parameters]).sum()
        checksums = self.accelerator.gather(local.reshape(1)).tolist()
        if len(set(checksums)) > 1:
            raise RuntimeError(f"The processes' trainable weights differ after training (checksums {checksums}).")
        return checksums

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
        """One epoch (or its remainder after a mid-epoch resume); returns the mean loss of all its batches on all
        processes, those before a mid-epoch checkpoint included."""
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
                self._fold_epoch_loss(total, count)
                total, count = torch.zeros_like(total), 0
                self._save_checkpoint()
        self._fold_epoch_loss(total, count)
        mean = progress.epoch_loss_sum / max(progress.epoch_loss_batches, 1)
        progress.epoch_loss_sum, progress.epoch_loss_batches = 0.0, 0
        return mean

    def _fold_epoch_loss(self, total: torch.Tensor, count: int) -> None:
        """Add the loss summed since the last fold, over all processes, to `progress`, which checkpoints carry:
        an epoch resumed mid-way still reports the mean over all its batches."""
        local = torch.stack([total.float(), torch.tensor(float(count), device=total.device)])
        summed = self.accelerator.reduce(local, reduction="sum")
        self.progress.epoch_loss_sum += float(summed[0])
        self.progress.epoch_loss_batches += int(summed[1])

    def _step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            loss = self.model(**batch, inference_outputs=False).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                self._clip_gradients()
            self._optimizer_step()
            self.scheduler.step()
        return loss.detach()

    def _clip_gradients(self) -> None:
        if self._plain_optimizer is None:
            self.accelerator.clip_grad_norm_(self.trainable_parameters, self.config.max_grad_norm)
        else:  # what Accelerate's clip_grad_norm_ calls on these back ends
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters, self.config.max_grad_norm)

    def _optimizer_step(self) -> None:
        """Step and clear gradients: through Accelerate's wrapper, or, where it adds nothing (see
        [`plain_optimizer`]), on the torch optimizer directly, at the steps the wrapper would take (not while
        gradients accumulate)."""
        if self._plain_optimizer is None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        elif self.accelerator.sync_gradients:
            self._plain_optimizer.step()
            self._plain_optimizer.zero_grad(set_to_none=True)

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
            "val/qwk": _kappa(quadratic_weighted_kappa(grades.numpy(), predicted, num_labels)),
            "val/accuracy": float((predicted == grades.numpy()).mean()),
            "val/prototype_qwk": _kappa(
                quadratic_weighted_kappa(grades.numpy(), outputs.prototype_logits.argmax(-1).numpy(), num_labels)
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


def _kappa(value: float | None) -> float:
    """Kappa for logs and model selection: NaN where undefined (a one-grade validation split), which
    `_keep_if_best` never takes as an improvement."""
    return math.nan if value is None else value


def _loggable(values: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as scalars or text: what TensorBoard's hparams accept."""
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in values.items()}


__all__ = [
    "RUN_NAME",
    "RetinaScanTrainer",
    "batches_per_epoch",
    "make_accelerator",
    "plain_optimizer",
    "resolve_mixed_precision",
]
