"""Two CPU processes (`torchrun --nproc_per_node 2`, gloo): sharded work, synchronised weights, one writer.

The test launches this file as the worker script; each rank records what it did into `rank<N>.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_shard_data_sync_gradients_and_write_once(tmp_path):
    from retinascan_hf.synthetic import save_synthetic_corpus

    corpus = tmp_path / "corpus"
    save_synthetic_corpus(corpus, {"train": (6,) * 5, "validation": (3,) * 5, "test": (2,) * 5}, size=32)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD_SIZE),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, str(corpus), str(tmp_path / "out"),
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
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
