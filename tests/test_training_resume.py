"""Kill-and-resume: a run interrupted and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from accelerate.utils import set_seed
from training_support import grade_structured_split, small_config

from retinascan_hf.tiny_clip import random_retinascan
from retinascan_hf.training import RetinaScanTrainer, make_accelerator
from retinascan_hf.training.checkpointing import HISTORY_NAME, list_checkpoints, load_history
from retinascan_hf.training.tracking import read_csv_metrics


class Killed(Exception):
    """Stands in for SIGKILL: raised before a training step, nothing after it runs."""


def run(output_dir, *, kill_before_step: int | None = None, **overrides) -> RetinaScanTrainer:
    config = small_config(output_dir, **overrides)
    set_seed(config.seed)
    model, _ = random_retinascan(seed=0)
    train = grade_structured_split(12, seed=1, n_views=config.n_views, name="train")
    validation = grade_structured_split(6, seed=2, name="validation")
    trainer = RetinaScanTrainer(model, config, train, validation, make_accelerator(config))
    if kill_before_step is not None:
        step, calls = trainer._step, []

        def dying_step(batch):
            calls.append(1)
            if len(calls) == kill_before_step:
                raise Killed
            return step(batch)

        trainer._step = dying_step
    trainer.train()
    return trainer


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{name: value for name, value in epoch.items() if not name.endswith("_seconds")} for epoch in history]


@pytest.mark.parametrize(
    ("kill_before_step", "overrides"),
    [
        (8, {}),  # killed in epoch 3: resumes from the epoch-2 checkpoint and redoes the lost batch
        (9, {"checkpoint_every_steps": 2}),  # resumes mid-epoch from the step-8 checkpoint
        (6, {"gradient_accumulation_steps": 2, "batches_per_epoch": 4}),  # accumulation state across resume
    ],
    ids=["epoch-checkpoint", "mid-epoch-checkpoint", "gradient-accumulation"],
)
def test_resumed_run_ends_with_the_same_weights(tmp_path, kill_before_step, overrides):
    straight = run(tmp_path / "straight", **overrides)
    with pytest.raises(Killed):
        run(tmp_path / "interrupted", kill_before_step=kill_before_step, **overrides)
    assert list_checkpoints(tmp_path / "interrupted" / "checkpoints")
    resumed = run(tmp_path / "interrupted", resume=True, **overrides)

    expected, actual = straight.unwrapped_model.state_dict(), resumed.unwrapped_model.state_dict()
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not different
    assert resumed.progress == straight.progress
    assert without_timing(resumed.history) == without_timing(straight.history)  # every epoch, not only the last
    assert len(resumed.history) == resumed.config.num_epochs
    optimizer_state = resumed.optimizer.state_dict()["state"]
    assert all(
        torch.equal(a["exp_avg"], b["exp_avg"])
        for a, b in zip(straight.optimizer.state_dict()["state"].values(), optimizer_state.values(), strict=True)
    )
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()


def test_checkpoints_hold_only_trainable_state_and_rotate(tmp_path):
    trainer = run(tmp_path, checkpoint_every_steps=2, save_total_limit=2)
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [path.name for path in checkpoints] == ["step-00000010", "step-00000012"]
    assert not [path for path in (tmp_path / "checkpoints").iterdir() if path.name.endswith(".tmp")]
    from safetensors.torch import load_file

    saved = load_file(str(checkpoints[-1] / "model.safetensors"))
    assert not any(name.startswith("clip.") for name in saved)  # the frozen backbone is not re-written
    assert {"projection.fc1.weight", "coral.bias", "text_prototypes"} <= saved.keys()
    assert (tmp_path / "best" / "trainable.safetensors").is_file()
    logged = read_csv_metrics(tmp_path / "logs" / "retinascan" / "metrics.csv")
    assert [step for step, _ in logged["val/qwk"]] == [3, 6, 9, 12]
    assert trainer.progress.global_step == 12


def test_resume_without_checkpoint_starts_from_scratch(tmp_path):
    trainer = run(tmp_path, resume=True, num_epochs=1)
    assert trainer.progress.epoch == 1


def test_fresh_run_refuses_an_earlier_runs_folder_unless_told_to_overwrite(tmp_path):
    run(tmp_path, num_epochs=1)
    with pytest.raises(FileExistsError, match="--resume"):
        run(tmp_path, num_epochs=1)
    trainer = run(tmp_path, num_epochs=2, overwrite_output_dir=True)
    assert [path.name for path in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000003", "step-00000006"]
    assert trainer.progress.epoch == 2


@pytest.mark.parametrize(
    "text",
    ['[{"val/qwk": "high"}]', '{"epochs": 3}', '[{"val/qwk": 0.5}', "[[1, 2]]"],
    ids=["text-value", "not-a-list", "truncated", "not-objects"],
)
def test_a_corrupt_history_is_refused_on_resume(tmp_path, text):
    run(tmp_path, num_epochs=1)
    (checkpoint,) = list_checkpoints(tmp_path / "checkpoints")
    assert load_history(checkpoint)[0]["epoch"] == 1
    (checkpoint / HISTORY_NAME).write_text(text)
    with pytest.raises(ValueError, match=HISTORY_NAME):
        run(tmp_path, num_epochs=2, resume=True)
