"""Two CPU processes (`torchrun --nproc_per_node 2`, gloo) fill the feature cache: each writes its own chunks,
nothing is gathered, and the cache equals the one a single process writes, bit for bit.

The test launches this file as the worker script; each rank records what it did into `rank<N>.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_training_distributed import free_port

COUNTS = {"train": (5,) * 5}  # 25 images: with batches of 4, 7 batches dealt out to the processes
FLUSH_EVERY = 4


def launch(processes: int, corpus: Path, output: Path) -> list[dict]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, str(corpus), str(output),
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return [json.loads((output / f"rank{rank}.json").read_text()) for rank in range(processes)]


def cache_contents(root: Path) -> dict[tuple[str, bytes], bytes]:
    """`(view folder, key hash) -> feature bytes` over every chunk of a cache."""
    contents = {}
    for chunk in root.rglob("chunk-*.safetensors"):
        tensors = load_file(str(chunk))
        for key, row in zip(tensors["keys"], tensors["features"], strict=True):
            contents[(chunk.parent.name, key.tobytes())] = row.tobytes()
    return contents


@pytest.mark.slow
def test_two_processes_write_their_own_chunks_and_match_a_single_process_cache(tmp_path):
    from retinascan_hf.synthetic import save_synthetic_corpus

    corpus = tmp_path / "corpus"
    save_synthetic_corpus(corpus, COUNTS, size=32)
    two = launch(2, corpus, tmp_path / "two")
    one = launch(1, corpus, tmp_path / "one")

    assert [record["stats"] for record in two] == [{"reused": 0, "computed": 50}] * 2
    assert all(record["gather_calls"] == 0 for record in two), "no feature is gathered across processes"
    decoded = [set(record["decoded_rows"]) for record in two]
    assert decoded[0] and decoded[1] and not decoded[0] & decoded[1]
    chunk_pids = {chunk.name.rsplit("-", 1)[1].split(".")[0] for chunk in (tmp_path / "two").rglob("chunk-*")}
    assert chunk_pids == {str(record["pid"]) for record in two}, "each process wrote the chunks it computed"
    assert two[0]["features_sha"] == two[1]["features_sha"] == one[0]["features_sha"]
    contents = cache_contents(tmp_path / "two" / "cache")
    assert len(contents) == 50 and contents == cache_contents(tmp_path / "one" / "cache")


def worker(corpus: str, output: str) -> None:
    """One rank: fill the cache for the train split (2 views) and record what this process did."""
    import hashlib

    import datasets
    from accelerate import Accelerator

    from retinascan_hf.tiny_clip import random_retinascan
    from retinascan_hf.training import data as data_module
    from retinascan_hf.training.augment import FundusAugmentation
    from retinascan_hf.training.data import FundusViews
    from retinascan_hf.training.feature_cache import (
        FeatureCache,
        augmentation_key,
        backbone_fingerprint,
        cached_features,
    )

    accelerator = Accelerator(cpu=True)
    model, processor = random_retinascan(seed=0)
    views = FundusViews(datasets.load_from_disk(corpus)["train"], processor, FundusAugmentation(), seed=0)
    cache = FeatureCache(
        Path(output) / "cache", backbone_fingerprint(model, processor), augmentation_key(FundusAugmentation(), 0)
    )
    record = {"pid": os.getpid(), "gather_calls": 0, "decoded_rows": []}
    gather, get_item = data_module.gather_object, FundusViews.__getitem__

    def counting_gather(*args, **kwargs):
        record["gather_calls"] += 1
        return gather(*args, **kwargs)

    def recording_get_item(self, request):
        record["decoded_rows"].append(request[0])
        return get_item(self, request)

    data_module.gather_object = counting_gather
    FundusViews.__getitem__ = recording_get_item
    features, stats = cached_features(
        model, views, "train", 2, cache=cache, accelerator=accelerator, batch_size=4, progress=False,
        flush_every=FLUSH_EVERY,
    )  # fmt: skip
    record["stats"] = vars(stats)
    record["features_sha"] = hashlib.sha256(np.ascontiguousarray(features.load().numpy()).tobytes()).hexdigest()
    (Path(output) / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    worker(*sys.argv[1:3])
