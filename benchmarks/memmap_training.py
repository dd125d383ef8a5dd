"""Head training on a feature cache larger than memory would comfortably hold: 1M images x 4 views x 512 fp16.

A synthetic cache in the real chunk format (random features with a grade offset, written with
`FeatureCache.write_chunk`) is opened memory-mapped exactly as `run_training` opens one, then the real
`RetinaScanTrainer` trains on it. Resident memory is sampled throughout, split into anonymous memory (what
the process allocated) and file-backed pages (the shared libraries, plus mapped chunks: at most
`MAX_RESIDENT_BYTES` of them stay resident). The cache itself (4 GB here, 8 GB as the float32 tensors an
in-memory split would hold) never has to fit.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinascan_hf.tiny_clip import random_retinascan, tiny_clip_config
from retinascan_hf.training.config import TrainingConfig
from retinascan_hf.training.feature_cache import MAX_RESIDENT_BYTES, CachedFeatures, FeatureCache, key_hashes
from retinascan_hf.training.splits import CachedSplit
from retinascan_hf.training.trainer import RetinaScanTrainer, make_accelerator

_PROPORTIONS = (0.73, 0.07, 0.15, 0.03, 0.02)  # EyePACS grade shares


def memory_status() -> dict[str, float]:
    """This process's resident memory (MiB) from /proc/self/status: total, anonymous, file-backed, peak."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            values[fields[name]] = int(value.split()[0]) / 1024
    return values


class MemorySampler:
    """Samples `memory_status` every `interval` seconds in a thread; keeps the maxima."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.maxima = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, value in memory_status().items():
                self.maxima[name] = max(self.maxima.get(name, 0.0), value)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        return {f"max_{name}_mib": round(value) for name, value in self.maxima.items()}


def synthetic_grades(size: int, seed: int) -> np.ndarray:
    grades = np.random.default_rng(seed).choice(5, size=size, p=_PROPORTIONS)
    grades[:5] = np.arange(5)
    return grades


def write_synthetic_cache(root: Path, size: int, views: int, dim: int, chunk_rows: int, seed: int = 0) -> FeatureCache:
    """Chunks of random features (`grade * 0.1` offset), keyed like `FundusViews.cache_keys`, in float16."""
    cache = FeatureCache(root, "bench-fingerprint", "bench-augmentation", dtype="float16")
    grades = synthetic_grades(size, seed)
    hashes = key_hashes([f"bench/{row}@{row:016x}" for row in range(size)])
    generator = np.random.default_rng(seed)
    for start in range(0, size, chunk_rows):
        rows = slice(start, min(start + chunk_rows, size))
        for view in range(views):
            block = generator.standard_normal((rows.stop - rows.start, dim), dtype=np.float32)
            block += grades[rows, None] * 0.1
            cache.write_chunk("train", view, hashes[rows], block)
    return cache


def open_split(cache: FeatureCache, size: int, views: int, dim: int, seed: int = 0) -> CachedSplit:
    """The split as `run_training` opens a large cache: memory-mapped `CachedFeatures`."""
    hashes = key_hashes([f"bench/{row}@{row:016x}" for row in range(size)])
    located = [cache.locate("train", view, hashes, dim) for view in range(views)]
    features = CachedFeatures(located, dim, np.dtype("float16"))
    ids = [f"bench/{row}" for row in range(size)]
    return CachedSplit(features, torch.from_numpy(synthetic_grades(size, seed)), ids, ["bench"] * size)


def run_memmap_training(size: int, views: int, dim: int, steps: int, chunk_rows: int) -> dict[str, Any]:
    results: dict[str, Any] = {"images": size, "views": views, "dim": dim, "dtype": "float16"}
    with tempfile.TemporaryDirectory(prefix="retinascan-memmap-bench-") as scratch:
        start = time.perf_counter()
        cache = write_synthetic_cache(Path(scratch) / "cache", size, views, dim, chunk_rows)
        results["write_cache_s"] = round(time.perf_counter() - start, 1)
        results["cache_gib"] = round(sum(p.stat().st_size for p in cache.directory.rglob("*")) / 2**30, 2)
        results["in_memory_float32_gib"] = round(size * views * dim * 4 / 2**30, 2)
        results["rss_before_open_mib"] = round(memory_status()["rss"])
        with MemorySampler() as sampler:
            start = time.perf_counter()
            train = open_split(cache, size, views, dim)
            results["open_s"] = round(time.perf_counter() - start, 1)
            model, _ = random_retinascan(tiny_clip_config(projection_dim=dim), seed=0)
            start = time.perf_counter()
            model.set_feature_statistics(statistics=train.feature_statistics())
            results["statistics_s"] = round(time.perf_counter() - start, 1)
            validation = CachedSplit(
                torch.randn(2000, 1, dim), torch.from_numpy(synthetic_grades(2000, 1)), ["v"] * 2000, ["v"] * 2000
            )
            config = TrainingConfig(
                output_dir=str(Path(scratch) / "run"),
                backbone="tiny",
                num_epochs=1,
                warmup_epochs=0.1,
                batches_per_epoch=steps,
                n_views=views,
                cpu=True,
                progress=False,
                log_with=[],
            )
            results["train_s"] = train_seconds(model, config, train, validation)
        results["steps"] = steps
        results["ms_per_step"] = round(1000 * results["train_s"] / steps, 2)
        results["resident_bytes_limit_mib"] = MAX_RESIDENT_BYTES // 2**20
        results.update(sampler.report())
        # Baseline, same run: the same steps on features held in memory (a reference-sized split).
        in_memory = CachedSplit(
            train.features.gather(np.repeat(np.arange(16_231), views), np.tile(np.arange(views), 16_231)).reshape(
                16_231, views, dim
            ),
            train.grades[:16_231],
            train.image_ids[:16_231],
            train.sources[:16_231],
        )
        config.output_dir = str(Path(scratch) / "baseline")
        model, _ = random_retinascan(tiny_clip_config(projection_dim=dim), seed=0)
        results["in_memory_ms_per_step"] = round(1000 * train_seconds(model, config, in_memory, validation) / steps, 2)
        results["ms_per_step_ratio_to_in_memory"] = round(results["ms_per_step"] / results["in_memory_ms_per_step"], 2)
    return results


def train_seconds(model, config: TrainingConfig, train: CachedSplit, validation: CachedSplit) -> float:
    trainer = RetinaScanTrainer(model, config, train, validation, make_accelerator(config))
    start = time.perf_counter()
    trainer.train()
    return round(time.perf_counter() - start, 1)


__all__ = ["MemorySampler", "memory_status", "open_split", "run_memmap_training", "write_synthetic_cache"]
