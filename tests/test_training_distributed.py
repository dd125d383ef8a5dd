"""Several processes: what the README's multi-process command does, and how a launch that cannot work fails.

Two CPU processes (`torchrun --nproc_per_node 2`, gloo): the README's command trains one run (not two racing
ones) with weights in sync and one model folder; with this file as the worker script, each rank records what it
did into `rank<N>.json` (sharded work, synchronised weights, one writer). A launch whose processes Accelerate
cannot see as one run is refused before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from retinascan_hf.training.config import TrainingConfig
from retinascan_hf.training.trainer import check_launcher_request, check_process_count, use_cpu

WORLD_SIZE = 2
REPOSITORY = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def synthetic_corpus(directory: Path) -> Path:
    from retinascan_hf.synthetic import save_synthetic_corpus

    save_synthetic_corpus(directory, {"train": (6,) * 5, "validation": (3,) * 5, "test": (2,) * 5}, size=32)
    return directory


def run_command(command: list[str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    environment.pop("WORLD_SIZE", None)
    return subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=300)


def torchrun(arguments: list[str]) -> list[str]:
    """`torchrun ARGUMENTS` as this interpreter runs it, on a free loopback port (tests may run side by side)."""
    port = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return [sys.executable, "-m", "torch.distributed.run", *port, *arguments]


def readme_command(prefix: str) -> list[str]:
    """The README line that starts with `prefix` (a shell command), split into arguments."""
    text = (REPOSITORY / "README.md").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    return shlex.split(line.split("#")[0])


@pytest.mark.slow
def test_readme_multi_process_cpu_command_trains_one_run_in_sync(tmp_path):
    """`torchrun --nproc_per_node 2 scripts/train.py ...` as the README shows it (no --cpu), with the corpus and
    output folders swapped for temporary ones and settings that keep a test short."""
    command = readme_command("torchrun --nproc_per_node 2 scripts/train.py")
    assert "--cpu" not in command
    arguments = command[1:]
    arguments[arguments.index("--data") + 1] = str(synthetic_corpus(tmp_path / "corpus"))
    arguments[arguments.index("--output-dir") + 1] = str(tmp_path / "out")
    quick = ["--num-epochs", "2", "--batches-per-epoch", "2", "--n-per-class", "2", "--n-views", "1"]
    completed = run_command(torchrun([*arguments, *quick, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]))
    assert completed.returncode == 0, completed.stderr[-4000:]

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["training"]["num_processes"] == WORLD_SIZE
    checksums = metrics["training"]["weight_checksums"]
    assert len(checksums) == WORLD_SIZE and len(set(checksums)) == 1  # every process ended with the same weights
    assert len(metrics["training"]["history"]) == 2
    written = sorted(path.name for path in (tmp_path / "out").iterdir() if "model" in path.name)
    assert written == ["model"] and (tmp_path / "out" / "model" / "feature_bank.safetensors").is_file()
    assert completed.stdout.count("Model folder:") == 1  # one run, reported once


@pytest.mark.slow
def test_accelerate_launch_cpu_with_two_processes_is_refused(tmp_path):
    """Without MPI, `accelerate launch --cpu --num_processes 2` starts ONE process: it must not train as if all
    were well."""
    arguments = ["--data", str(tmp_path / "corpus"), "--output-dir", str(tmp_path / "out"), "--backbone", "tiny"]
    launch = ["-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1"]
    completed = run_command([sys.executable, *launch, "--mixed_precision", "no", "scripts/train.py", *arguments])
    assert completed.returncode != 0
    assert (
        "retinascan train: error: `accelerate launch --cpu --num_processes 2` started one process" in completed.stderr
    )
    assert "torchrun --nproc_per_node N" in completed.stderr
    assert not (tmp_path / "out").exists()


def test_without_a_gpu_the_cpu_backend_is_chosen(monkeypatch):
    import torch

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert use_cpu(TrainingConfig()) is True
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert use_cpu(TrainingConfig()) is False and use_cpu(TrainingConfig(cpu=True)) is True


def test_processes_the_accelerator_cannot_see_are_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_process_count(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_process_count(2)
    with pytest.raises(RuntimeError, match=re.escape("started 2 processes (WORLD_SIZE=2) but Accelerate sees 1")):
        check_process_count(1)


@pytest.mark.parametrize(
    ("launcher", "refused"),
    [
        ("accelerate launch --cpu --num_processes 2 scripts/train.py", True),
        ("accelerate launch --cpu --num-processes=4 scripts/train.py", True),
        ("accelerate launch --cpu --num_processes 1 scripts/train.py", False),
        ("accelerate launch --cpu scripts/train.py", False),
    ],
)
def test_accelerate_cpu_launch_asking_for_several_processes_is_refused(monkeypatch, launcher, refused):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if refused:
        with pytest.raises(RuntimeError, match="started one process"):
            check_launcher_request(launcher.split())
    else:
        check_launcher_request(launcher.split())
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun-style launches are checked by check_process_count instead
    check_launcher_request(["accelerate", "launch", "--cpu", "--num_processes", "2", "x.py"])


@pytest.mark.slow
def test_two_processes_shard_data_sync_gradients_and_write_once(tmp_path):
    corpus = synthetic_corpus(tmp_path / "corpus")
    completed = run_command(
        torchrun(["--nproc_per_node", str(WORLD_SIZE), __file__, str(corpus), str(tmp_path / "out")])
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]

    assert [record["num_processes"] for record in ranks] == [WORLD_SIZE] * WORLD_SIZE
    # Feature extraction: each image decoded and forwarded by exactly one process.
    decoded = [set(record["decoded_image_ids"]) for record in ranks]
    assert decoded[0] and decoded[1] and not decoded[0] & decoded[1]
    assert len(decoded[0] | decoded[1]) == 30 + 15 + 10
    # Training: different batches per process...
    assert ranks[0]["batches"] != ranks[1]["batches"]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 4
    # ...yet identical weights after every optimizer step (DDP averaged the gradients).
    assert ranks[0]["weights_after_step"] == ranks[1]["weights_after_step"]
    assert len(set(ranks[0]["weights_after_step"])) == len(ranks[0]["weights_after_step"])  # and they moved
    # Only the main process wrote the model folder.
    assert sorted(ranks[0]["writes"]) == ["bank", "model", "processor"] and ranks[1]["writes"] == []
    assert (tmp_path / "out" / "model" / "feature_bank.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["training"]["num_processes"] == WORLD_SIZE


def worker(corpus: str, output: str) -> None:
    """One rank: run a short training job while recording what this process did."""
    import torch
    from training_support import small_config

    from retinascan_hf import FeatureBank, RetinaScanImageProcessor, RetinaScanModel
    from retinascan_hf.training import RetinaScanTrainer, make_accelerator, run_training
    from retinascan_hf.training import trainer as trainer_module
    from retinascan_hf.training.data import FundusViews

    config = small_config(
        Path(output), data=corpus, cache_dir=str(Path(output) / "cache"), num_epochs=2, batches_per_epoch=2
    )
    accelerator = make_accelerator(config)
    record = {"num_processes": accelerator.num_processes, "decoded_image_ids": [], "batches": [], "writes": []}
    record["weights_after_step"] = []

    get_item = FundusViews.__getitem__

    def recording_get_item(self, request):
        record["decoded_image_ids"].append(self.image_ids[request[0]])
        return get_item(self, request)

    plan_batches = trainer_module.epoch_plan

    def recording_plan(*args, **kwargs):
        for batch in plan_batches(*args, **kwargs):
            record["batches"].append(batch)
            yield batch

    step = RetinaScanTrainer._step

    def recording_step(self, batch):
        loss = step(self, batch)
        if self.accelerator.sync_gradients:
            weights = torch.cat([parameter.detach().flatten() for parameter in self.trainable_parameters])
            record["weights_after_step"].append(hashlib.sha256(weights.numpy().tobytes()).hexdigest())
        return loss

    def recording_save(kind, save):
        def wrapped(self, *args, **kwargs):
            record["writes"].append(kind)
            return save(self, *args, **kwargs)

        return wrapped

    FundusViews.__getitem__ = recording_get_item
    trainer_module.epoch_plan = recording_plan
    RetinaScanTrainer._step = recording_step
    RetinaScanModel.save_pretrained = recording_save("model", RetinaScanModel.save_pretrained)
    RetinaScanImageProcessor.save_pretrained = recording_save("processor", RetinaScanImageProcessor.save_pretrained)
    FeatureBank.save_pretrained = recording_save("bank", FeatureBank.save_pretrained)

    run_training(config, accelerator)
    path = Path(output) / f"rank{accelerator.process_index}.json"
    path.write_text(json.dumps(record))


if __name__ == "__main__":
    worker(*sys.argv[1:3])
