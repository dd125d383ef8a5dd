"""The feature cache at scale: append-only chunks, memory-mapped reads, streamed statistics.

A cache that rewrites its shard on every flush writes N²/chunk bytes; a run that holds every feature in
memory cannot train on a million images. These tests pin the chunk format's promises (each feature written
once, completed chunks never touched again, temporary files ignored, corruption named) and that training on
memory-mapped features gives exactly what training on the same features in memory gives.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from training_support import grade_structured_split, small_config

from retinascan_hf import RetinaScanModel
from retinascan_hf.synthetic import save_synthetic_corpus, synthetic_corpus
from retinascan_hf.tiny_clip import random_retinascan
from retinascan_hf.training import feature_cache as feature_cache_module
from retinascan_hf.training import run_training
from retinascan_hf.training import splits as splits_module
from retinascan_hf.training.augment import FundusAugmentation
from retinascan_hf.training.data import FundusViews
from retinascan_hf.training.feature_cache import (
    CachedFeatures,
    FeatureCache,
    augmentation_key,
    backbone_fingerprint,
    cached_features,
    key_hashes,
)
from retinascan_hf.training.sampler import BalancedGradeSampler
from retinascan_hf.training.splits import CachedSplit, epoch_plan

COUNTS = {"train": (4,) * 5, "validation": (2,) * 5, "test": (2,) * 5}


@pytest.fixture(scope="module")
def tiny():
    return random_retinascan(seed=0)


def views_of(split, processor) -> FundusViews:
    return FundusViews(split, processor, FundusAugmentation(), seed=0)


def fill(tiny, split, cache, n_views=2, **kwargs):
    model, processor = tiny
    options = {"accelerator": Accelerator(cpu=True), "batch_size": 4, "progress": False, **kwargs}
    return cached_features(model, views_of(split, processor), "train", n_views, cache=cache, **options)


def new_cache(tiny, root, dtype="float32") -> FeatureCache:
    model, processor = tiny
    return FeatureCache(
        root, backbone_fingerprint(model, processor), augmentation_key(FundusAugmentation(), 0), dtype=dtype
    )


def chunk_files(cache: FeatureCache) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(path): (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(cache.directory.rglob("*"))
        if path.is_file()
    }


def test_each_feature_is_written_once_and_completed_chunks_are_never_rewritten(tiny, tmp_path, monkeypatch):
    cache = new_cache(tiny, tmp_path)
    split = synthetic_corpus({"train": (4,) * 5}, size=48)["train"]
    written = []
    original = FeatureCache.write_chunk

    def counting(self, split_name, view, hashes, features):
        written.append(len(features))
        return original(self, split_name, view, hashes, features)

    monkeypatch.setattr(FeatureCache, "write_chunk", counting)
    _, stats = fill(tiny, split.select(range(8)), cache, flush_every=4)
    assert vars(stats) == {"reused": 0, "computed": 16} and sum(written) == 16
    before = chunk_files(cache)
    assert len(before) == 4  # two chunks of 4 images, per view
    _, stats = fill(tiny, split, cache, flush_every=4)
    assert vars(stats) == {"reused": 16, "computed": 24} and sum(written) == 16 + 24  # only the new rows
    after = chunk_files(cache)
    assert {path: after[path] for path in before} == before  # same inode, time and bytes: append-only
    assert len(after) == 4 + 6


def test_temporary_leftovers_are_ignored_and_a_corrupt_chunk_is_named(tiny, tmp_path):
    cache = new_cache(tiny, tmp_path)
    split = synthetic_corpus({"train": (2,) * 5}, size=48)["train"]
    reference, _ = fill(tiny, split, cache, n_views=1)
    folder = cache.view_dir("train", 0)
    (folder / ".chunk-0-host-1.safetensors.tmp").write_bytes(b"half a chunk from a killed run")
    again, stats = fill(tiny, split, cache, n_views=1)
    assert vars(stats) == {"reused": 10, "computed": 0} and torch.equal(again.load(), reference.load())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale, live = (
        folder / f".chunk-1-000001-{host}-{pid}.safetensors.tmp" for pid in (dead.stdout.strip(), os.getpid())
    )
    for path in (stale, live):
        path.write_bytes(b"in flight")
    assert cache.remove_stale_temporaries("train", 0) == [stale]  # a live writer's and another host's stay
    assert live.exists() and (folder / ".chunk-0-host-1.safetensors.tmp").exists() and not stale.exists()
    (chunk,) = cache.chunk_paths("train", 0)
    chunk.write_bytes(chunk.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{chunk.name}.*truncated or corrupt"):
        fill(tiny, split, cache, n_views=1)


def test_float16_storage_is_its_own_cache_and_the_rounded_values_are_served(tiny, tmp_path):
    split = synthetic_corpus({"train": (2,) * 5}, size=48)["train"]
    exact, _ = fill(tiny, split, new_cache(tiny, tmp_path))
    half_cache = new_cache(tiny, tmp_path, dtype="float16")
    half, stats = fill(tiny, split, half_cache)
    assert stats.computed == 20  # float32 chunks are not reused as float16 ones
    assert half_cache.view_dir("train", 1).name.endswith("-float16")
    assert torch.equal(half.load(), exact.load().half().float())
    reused, stats = fill(tiny, split, half_cache)
    assert stats.computed == 0 and torch.equal(reused.load(), half.load())


def test_memory_mapped_rows_batches_and_statistics_equal_the_in_memory_ones(tiny, tmp_path, monkeypatch):
    split = synthetic_corpus({"train": (4,) * 5}, size=48)["train"]
    mapped, _ = fill(tiny, split, new_cache(tiny, tmp_path), flush_every=4)
    assert isinstance(mapped, CachedFeatures) and len(mapped.paths) == 10  # 5 chunks per view
    loaded = mapped.load()
    grades = torch.tensor(split["grade"])
    on_disk = CachedSplit(mapped, grades, split["image_id"], split["source"])
    in_memory = CachedSplit(loaded, grades, split["image_id"], split["source"])
    sampler = BalancedGradeSampler(grades.tolist(), n_per_class=2, num_classes=5, num_batches=3, seed=0)
    plan = list(epoch_plan(sampler, epoch=0, seed=0, n_views=2, rank=0))
    for first, second in zip(on_disk.batches(iter(plan)), in_memory.batches(iter(plan)), strict=True):
        assert torch.equal(first["image_features"], second["image_features"])
        assert torch.equal(first["labels"], second["labels"])
    assert torch.equal(on_disk.view_features(None), in_memory.view_features(None))
    # Room for one resident chunk only: the others give their pages back as reads go on, rows stay the same.
    monkeypatch.setattr(feature_cache_module, "MAX_RESIDENT_BYTES", mapped.paths[0].stat().st_size)
    released, _ = fill(tiny, split, new_cache(tiny, tmp_path), flush_every=4)
    assert torch.equal(released.load(), loaded) and len(released._resident) == 1 and len(released._maps) == 10
    monkeypatch.setattr(feature_cache_module, "_MAX_MAPS", 3)
    unmapped, _ = fill(tiny, split, new_cache(tiny, tmp_path), flush_every=4)
    assert torch.equal(unmapped.load(), loaded) and len(unmapped._maps) == 3
    for mapped_stat, memory_stat in zip(on_disk.feature_statistics(), in_memory.feature_statistics(), strict=True):
        assert torch.equal(mapped_stat, memory_stat)
    flat = loaded.reshape(-1, loaded.shape[-1]).double()
    assert torch.allclose(on_disk.feature_statistics()[0], flat.mean(0).float(), atol=1e-6)
    assert torch.allclose(on_disk.feature_statistics()[1], flat.std(0).float(), atol=1e-5)


def test_streamed_statistics_span_blocks_like_one_pass(monkeypatch):
    split = grade_structured_split(40, seed=3, n_views=3)  # 200 rows x 3 views
    monkeypatch.setattr(splits_module, "STATISTICS_BLOCK_ROWS", 7)
    mean, std = split.feature_statistics()
    flat = split.features.reshape(-1, split.features.shape[-1]).double()
    assert torch.allclose(mean, flat.mean(0).float(), atol=1e-6) and torch.allclose(std, flat.std(0).float(), atol=1e-6)


def test_key_hashes_tell_every_key_apart_and_locate_handles_shared_prefixes(tmp_path):
    keys = [f"eyepacs/{index}_left@{index:016x}" for index in range(5000)]
    hashes = key_hashes(keys)
    assert hashes.shape == (5000, 2) and len({tuple(row) for row in hashes.tolist()}) == 5000
    cache = FeatureCache(tmp_path, "fingerprint", "aug")
    features = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    colliding = np.array([[7, 1], [7, 2], [7, 3], [9, 9]], dtype=np.int64)  # same first 64 bits
    cache.write_chunk("train", 0, colliding, features)
    located = cache.locate("train", 0, np.array([[7, 3], [7, 5], [9, 9], [7, 1]], dtype=np.int64), dim=3)
    assert located.chunk.tolist() == [0, -1, 0, 0] and located.row[[0, 2, 3]].tolist() == [2, 3, 0]


def test_training_on_memory_mapped_features_equals_training_in_memory(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    save_synthetic_corpus(corpus, COUNTS, size=48, seed=0)
    cache = tmp_path / "cache"
    settings = {"data": str(corpus), "cache_dir": str(cache), "num_epochs": 2, "batches_per_epoch": 2}
    in_memory = run_training(small_config(tmp_path / "memory", **settings))
    monkeypatch.setattr(splits_module, "IN_MEMORY_LIMIT_BYTES", 0)
    mapped = run_training(small_config(tmp_path / "mapped", **settings))
    assert mapped.metrics["feature_cache"]["memory_mapped"] == {"train": True, "validation": True, "test": True}
    assert in_memory.metrics["feature_cache"]["memory_mapped"]["train"] is False
    first, second = in_memory.trainer.unwrapped_model.state_dict(), mapped.trainer.unwrapped_model.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert mapped.metrics["evaluation"] == in_memory.metrics["evaluation"]


def test_a_run_that_fills_the_cache_trains_the_same_model_as_one_that_reuses_it(tmp_path):
    """Filling runs the data loader, which draws its seed from the global RNG: that must not shift training."""
    corpus = tmp_path / "corpus"
    save_synthetic_corpus(corpus, COUNTS, size=48, seed=0)
    settings = {"data": str(corpus), "cache_dir": str(tmp_path / "cache"), "num_epochs": 2, "batches_per_epoch": 2}
    runs = [run_training(small_config(tmp_path / name, **settings)) for name in ("fills", "reuses")]
    assert runs[0].metrics["feature_cache"]["total"]["reused"] == 0
    assert runs[1].metrics["feature_cache"]["total"]["computed"] == 0
    first, second = (run.trainer.unwrapped_model.state_dict() for run in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_a_non_finite_feature_is_refused_naming_the_image_and_nothing_is_cached(tiny, tmp_path, monkeypatch):
    split = synthetic_corpus({"train": (1,) * 5}, size=48)["train"]
    cache = new_cache(tiny, tmp_path, dtype="float16")
    original = RetinaScanModel.forward_features

    def overflowing(self, pixel_values):
        features = original(self, pixel_values)
        features[0, 0] = 1e5  # finite in float32, infinite once rounded to float16
        return features

    monkeypatch.setattr(RetinaScanModel, "forward_features", overflowing)
    with pytest.raises(
        ValueError, match=rf"non-finite float16 features for 1 train image\(s\) \({split['image_id'][0]}@"
    ):
        fill(tiny, split, cache, n_views=1, batch_size=8)
    assert cache.chunk_paths("train", 0) == []
