"""Head training speed (issue 10, item 6): the trainer's epochs over cached 512-d features against a bare eager
PyTorch loop over the same number of steps, where each step's time goes, and the top of a torch profile.

The bare loop is the floor a training framework is judged against: random batches of the trainer's size,
`forward_head` + loss + backward + AdamW (`foreach`), nothing else. The trainer adds a balanced sampler, clipping,
a cosine schedule, Accelerate, validation and a checkpoint every epoch, and is asked to take <= 0.7x the bare
loop anyway, by doing less per step (loss-only forward, fused AdamW, no host syncs, no DataLoader, no Accelerate
wrapper where it adds nothing). The two run in turn, an epoch's worth of bare steps after each trainer epoch, so
load that comes and goes during the run weighs on both sides.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.results import Row, Target
from benchmarks.training import synthetic_feature_split
from retinascan_hf.modeling_retinascan import RetinaScanModel
from retinascan_hf.tiny_clip import random_retinascan, tiny_clip_config
from retinascan_hf.training.config import TrainingConfig
from retinascan_hf.training.splits import CachedSplit, epoch_plan
from retinascan_hf.training.trainer import RetinaScanTrainer, make_accelerator

TARGET_RATIO = 0.7
BREAKDOWN_STEPS = 400  # per side, for the per-phase tables
BREAKDOWN_BLOCK = 50
PROFILE_ROWS = 12


def head_model() -> RetinaScanModel:
    """A model whose heads have ViT-B/16's sizes (512-d features) on a tiny random backbone that never runs."""
    torch.manual_seed(0)
    model, _ = random_retinascan(clip_config=tiny_clip_config(projection_dim=512))
    return model


@dataclass
class HeadTrainingData:
    """Cached training and validation features of the reference size, and the run's configuration."""

    train: CachedSplit
    validation: CachedSplit
    config: TrainingConfig

    @classmethod
    def build(cls, work_dir: str | Path, train_size: int, num_epochs: int, **overrides: Any) -> HeadTrainingData:
        dim = head_model().config.embedding_dim
        config = TrainingConfig(
            output_dir=str(work_dir),
            num_epochs=num_epochs,
            n_views=1,
            cpu=True,
            progress=False,
            seed=0,
            overwrite_output_dir=True,
            **overrides,
        )
        train = synthetic_feature_split(train_size, 1, dim, seed=1)
        return cls(train, synthetic_feature_split(max(10, train_size // 10), 1, dim, seed=2), config)

    def trainer(self, **overrides: Any) -> RetinaScanTrainer:
        config = dataclasses.replace(self.config, **overrides)
        return RetinaScanTrainer(head_model(), config, self.train, self.validation, make_accelerator(config))


@dataclass
class LoopTiming:
    """Seconds for a number of steps, and milliseconds per step spent in each phase of a step."""

    seconds: float
    steps: int
    phase_ms: dict[str, float]


class BareHeadLoop:
    """Plain PyTorch steps over fresh heads, run in chunks (`run`): random batches of the trainer's size,
    `forward_head` (every output) + loss + backward + AdamW (`foreach`); no sampler, clipping, schedule, logging,
    validation or checkpoints. Time and per-phase time add up over the chunks."""

    def __init__(self, data: HeadTrainingData):
        self.model, config = head_model(), data.config
        self.features, self.grades = data.train.features[:, 0], data.train.grades
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay, foreach=True
        )
        self.batch_size = config.n_per_class * self.model.config.num_labels
        self.generator = torch.Generator().manual_seed(0)
        self.phases: Counter[str] = Counter()
        self.seconds, self.steps = 0.0, 0

    def run(self, steps: int) -> None:
        model, optimizer, phases = self.model, self.optimizer, self.phases
        model.train()
        started = time.perf_counter()
        for _ in range(steps):
            mark = time.perf_counter()
            index = torch.randint(0, self.features.shape[0], (self.batch_size,), generator=self.generator)
            batch_features, labels = self.features[index], self.grades[index]
            mark = _lap(phases, "batch", mark)
            loss = model.forward_head(batch_features, labels=labels).loss
            mark = _lap(phases, "forward", mark)
            loss.backward()
            mark = _lap(phases, "backward", mark)
            optimizer.step()
            mark = _lap(phases, "optimizer", mark)
            optimizer.zero_grad(set_to_none=True)
            _lap(phases, "zero_grad", mark)
        self.seconds += time.perf_counter() - started
        self.steps += steps

    @property
    def timing(self) -> LoopTiming:
        return LoopTiming(self.seconds, self.steps, _per_step_ms(self.phases, self.seconds, self.steps))


def trainer_and_bare_loop_in_turn(trainer: RetinaScanTrainer, data: HeadTrainingData) -> tuple[float, LoopTiming]:
    """Train `trainer` fully, running after each of its epochs an epoch's worth of bare-loop steps: a shared
    machine's slow spells then weigh on both alike (timing one whole run after the other, this ratio moved from
    0.79 to 0.96 between two runs). Returns the trainer's seconds without the bare loop's, and the bare loop's
    timing over the same number of steps."""
    bare = BareHeadLoop(data)
    steps_per_epoch = len(trainer.sampler)
    train_epoch = trainer._train_epoch

    def epoch_then_bare(*args: Any, **kwargs: Any) -> Any:
        result = train_epoch(*args, **kwargs)
        bare.run(steps_per_epoch)
        return result

    trainer._train_epoch = epoch_then_bare  # an instance attribute: this trainer only
    started = time.perf_counter()
    try:
        trainer.train()
    finally:
        del trainer._train_epoch
    return time.perf_counter() - started - bare.seconds, bare.timing


def _lap(phases: Counter[str], name: str, mark: float) -> float:
    now = time.perf_counter()
    phases[name] += now - mark
    return now


def _per_step_ms(phases: Counter[str], seconds: float, steps: int) -> dict[str, float]:
    """Milliseconds per step of each phase, plus `other` (what no phase covers) and `total`."""
    result = {name: 1000 * value / steps for name, value in phases.items()}
    result["other"] = 1000 * (seconds - sum(phases.values())) / steps
    result["total"] = 1000 * seconds / steps
    return {name: round(value, 4) for name, value in result.items()}


def _timed(phases: Counter[str], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[name] += time.perf_counter() - started

    return timed


def trainer_steps(trainer: RetinaScanTrainer, steps: int) -> Iterator[dict[str, torch.Tensor]]:
    """Up to `steps` batches of the trainer's first epoch plan, as its loop draws them."""
    config = trainer.config
    plan = epoch_plan(trainer.sampler, epoch=0, seed=config.seed, n_views=config.n_views, rank=0)
    return islice(trainer.train_split.batches(plan), steps)


def trainer_step_breakdown(trainer: RetinaScanTrainer, steps: int) -> LoopTiming:
    """Time `steps` more training steps of `trainer` (its `_step`, as the loop calls it), split into phases by
    timing the calls it makes (instance attributes shadow the methods for this trainer only). "optimizer" is the
    step and the clearing of gradients."""
    phases: Counter[str] = Counter()
    shadowed = [
        (trainer.model, "forward", "forward"),
        (trainer.accelerator, "backward", "backward"),
        (trainer, "_clip_gradients", "clip"),
        (trainer, "_optimizer_step", "optimizer"),
        (trainer.scheduler, "step", "scheduler"),
    ]
    for owner, attribute, phase in shadowed:
        setattr(owner, attribute, _timed(phases, phase, getattr(owner, attribute)))
    batches = trainer_steps(trainer, steps)
    trainer.model.train()
    done = 0
    started = time.perf_counter()
    try:
        while True:
            mark = time.perf_counter()
            batch = next(batches, None)
            _lap(phases, "batch", mark)
            if batch is None:
                break
            trainer._step(batch)
            done += 1
    finally:
        for owner, attribute, _ in shadowed:
            delattr(owner, attribute)
    seconds = time.perf_counter() - started
    return LoopTiming(seconds, done, _per_step_ms(phases, seconds, done))


def profile_table(step: Callable[[], None], steps: int, title: str) -> str:
    """The top of a torch.profiler table (self CPU time) over `steps` calls of `step`, after two warm-up calls."""
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=PROFILE_ROWS)
    return f"{title} ({steps} steps)\n{table}"


def trainer_profile(trainer: RetinaScanTrainer, steps: int) -> str:
    batches = iter(list(trainer_steps(trainer, steps + 2)))
    return profile_table(lambda: trainer._step(next(batches)), steps, "RetinaScanTrainer._step")


def bare_profile(data: HeadTrainingData, steps: int) -> str:
    model, config = head_model(), data.config
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, foreach=True)
    features, grades = data.train.features[:, 0], data.train.grades
    model.train()

    def step() -> None:
        index = torch.randint(0, features.shape[0], (config.n_per_class * model.config.num_labels,))
        model.forward_head(features[index], labels=grades[index]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return profile_table(step, steps, "bare eager loop step")


@dataclass
class HeadTrainingResult:
    """The rows for the results table, and the per-step breakdowns of both loops."""

    rows: list[Row]
    breakdown: dict[str, dict[str, float]]


def run_head_training(
    work_dir: str | Path, *, train_size: int, num_epochs: int, compiled: bool = False
) -> HeadTrainingResult:
    """The trainer's `num_epochs` over `train_size` cached features vs the bare loop over the same number of steps,
    the two run in turn epoch by epoch; with `compiled`, a `torch_compile=True` trainer too (ratio reported, no target:
    off by default, see `TrainingConfig.torch_compile`)."""
    data = HeadTrainingData.build(work_dir, train_size, num_epochs)
    trainer = data.trainer()
    steps = len(trainer.sampler) * num_epochs
    trainer_seconds, bare_timing = trainer_and_bare_loop_in_turn(trainer, data)
    bare_seconds = bare_timing.seconds
    batch = data.config.n_per_class * trainer.unwrapped_model.config.num_labels
    bare = Row(
        "head_training_bare_loop",
        f"bare eager head loop, {steps:,} steps of {batch} (an epoch's worth after each trainer epoch)",
        bare_seconds,
        "s",
    )
    trainer_row = Row(
        "head_training_trainer",
        f"RetinaScanTrainer, {num_epochs} epochs over {train_size:,} cached features ({steps:,} steps)",
        trainer_seconds,
        "s",
    )
    trainer_row.relate(bare, target=Target("<=", TARGET_RATIO), note="/ bare loop (issue 10 item 6)")
    rows = [bare, trainer_row]
    if compiled:
        compiled_trainer = data.trainer(torch_compile=True, output_dir=str(Path(work_dir) / "compiled"))
        started = time.perf_counter()
        compiled_trainer.train()
        row = Row(
            "head_training_trainer_compiled",
            f"RetinaScanTrainer with torch_compile, {num_epochs} epochs (compile time included)",
            time.perf_counter() - started,
            "s",
        )
        row.relate(bare, note="/ bare loop; not the default (see TrainingConfig.torch_compile)")
        rows.append(row)
    return HeadTrainingResult(rows, step_breakdowns_in_turn(trainer, data, min(steps, BREAKDOWN_STEPS)))


def step_breakdowns_in_turn(
    trainer: RetinaScanTrainer, data: HeadTrainingData, steps: int, block: int = BREAKDOWN_BLOCK
) -> dict[str, dict[str, float]]:
    """Milliseconds per step by phase of `trainer` and of a bare loop, over `steps` steps each in alternating blocks
    of `block`: timed apart (a few hundred trainer steps after the whole run), the two tables once disagreed with the
    whole-run ratio they are meant to explain, because the machine's speed had changed in between."""
    bare = BareHeadLoop(data)
    parts = []
    for _ in range(max(1, steps // block)):
        parts.append(trainer_step_breakdown(trainer, block))
        bare.run(block)
    trainer_steps_done = sum(part.steps for part in parts)
    trainer_ms = {
        name: round(sum(part.phase_ms.get(name, 0.0) * part.steps for part in parts) / trainer_steps_done, 4)
        for name in dict.fromkeys(name for part in parts for name in part.phase_ms)
    }
    return {"trainer_ms_per_step": trainer_ms, "bare_ms_per_step": bare.timing.phase_ms}


def head_training_rows(work_dir: str | Path, *, train_size: int, num_epochs: int) -> list[Row]:
    """The rows `scripts/benchmark.py` puts in the results table."""
    return run_head_training(work_dir, train_size=train_size, num_epochs=num_epochs).rows


def format_breakdown(breakdown: dict[str, dict[str, float]]) -> str:
    """Milliseconds per step by phase, the trainer beside the bare loop."""
    trainer, bare = breakdown["trainer_ms_per_step"], breakdown["bare_ms_per_step"]
    names = [name for name in (*trainer, *bare) if name not in ("other", "total")]
    names = [*dict.fromkeys(names), "other", "total"]
    lines = [f"{'ms per step':<12} {'trainer':>9} {'bare':>9}"]
    for name in names:
        cells = [f"{table[name]:>9.3f}" if name in table else f"{'-':>9}" for table in (trainer, bare)]
        lines.append(f"{name:<12} {' '.join(cells)}")
    return "\n".join(lines)


__all__ = [
    "BareHeadLoop",
    "HeadTrainingData",
    "HeadTrainingResult",
    "LoopTiming",
    "bare_profile",
    "format_breakdown",
    "head_training_rows",
    "run_head_training",
    "step_breakdowns_in_turn",
    "trainer_and_bare_loop_in_turn",
    "trainer_profile",
    "trainer_step_breakdown",
]
