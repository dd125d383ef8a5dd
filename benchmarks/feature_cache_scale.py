"""What filling the feature cache writes, at 100,000 images: bytes written against the cache's size.

The backbone and the images are replaced by cheap stand-ins (a fixed random projection of a few pixels), so
this measures the cache itself: chunk writes, their atomic renames, and what the process holds in memory.
Bytes written are read from `/proc/self/io` (`wchar`: everything this process passed to `write`) before
and after. The scheme this replaced rewrote one shard per split after every group of `flush_every` images;
what it would have written for the same run is computed, not run (it is quadratic: hours at this size).
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from benchmarks.timing import peak_rss_mib
from retinascan_hf.training.feature_cache import FLUSH_EVERY, FeatureCache, cached_features

_PIXELS = 8  # side of the stand-in pictures


class StandInViews(torch.utils.data.Dataset):
    """`FundusViews`' interface over `size` rows with no images: tiny random pixels, unique cache keys."""

    def __init__(self, size: int):
        self.size = size
        self.cache_keys = [f"bench/{row}@{row:016x}" for row in range(size)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, request: tuple[int, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        row, views = request
        generator = torch.Generator().manual_seed(row)
        return {
            "pixel_values": torch.rand(len(views), 3, _PIXELS, _PIXELS, generator=generator),
            "row": torch.full((len(views),), row, dtype=torch.long),
            "view": torch.tensor(views, dtype=torch.long),
            "labels": torch.zeros(len(views), dtype=torch.long),
        }


class StandInBackbone(torch.nn.Module):
    """`forward_features` as a fixed random projection: the cost of a backbone without its compute."""

    def __init__(self, dim: int):
        super().__init__()
        self.config = SimpleNamespace(embedding_dim=dim)
        self.projection = torch.nn.Linear(3 * _PIXELS * _PIXELS, dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.projection.weight.dtype

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values.flatten(1))


def written_bytes() -> int:
    """Bytes this process has passed to `write` so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar line")


def rewrite_scheme_bytes(images: int, views: int, dim: int, flush_every: int, itemsize: int) -> int:
    """Bytes the previous scheme writes: after each group, every view's whole shard so far, again."""
    groups = math.ceil(images / flush_every)
    rows_after = [min(images, (group + 1) * flush_every) for group in range(groups)]
    return sum(rows * views * dim * itemsize for rows in rows_after)


def run_cache_benchmark(images: int, views: int, dim: int, dtype: str, cache_dir: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model, dataset = StandInBackbone(dim), StandInViews(images)
    cache = FeatureCache(cache_dir, "bench-fingerprint", "bench-augmentation", dtype=dtype)
    accelerator = Accelerator(cpu=True)
    rss_before = peak_rss_mib(resource.RUSAGE_SELF)
    before, start = written_bytes(), time.perf_counter()
    features, stats = cached_features(
        model, dataset, "train", views, cache=cache, accelerator=accelerator, batch_size=256
    )
    fill_seconds = time.perf_counter() - start
    written = written_bytes() - before
    cache_bytes = sum(path.stat().st_size for path in cache.directory.rglob("*") if path.is_file())
    start = time.perf_counter()
    _, reread = cached_features(model, dataset, "train", views, cache=cache, accelerator=accelerator, batch_size=256)
    reuse_seconds = time.perf_counter() - start
    itemsize = np.dtype(dtype).itemsize
    previous = rewrite_scheme_bytes(images, views, dim, FLUSH_EVERY, itemsize)
    return {
        "images": images,
        "views": views,
        "dim": dim,
        "dtype": dtype,
        "computed_rows": stats.computed,
        "reused_rows_second_run": reread.reused,
        "chunks": len(features.paths),
        "fill_s": round(fill_seconds, 1),
        "images_per_s": round(images / fill_seconds),
        "reuse_s": round(reuse_seconds, 1),
        "cache_mib": round(cache_bytes / 2**20, 1),
        "written_mib": round(written / 2**20, 1),
        "written_over_cache_size": round(written / cache_bytes, 4),
        "previous_scheme_written_gib": round(previous / 2**30, 1),
        "previous_scheme_over_cache_size": round(previous / (images * views * dim * itemsize), 1),
        "rss_before_mib": round(rss_before),
        "peak_rss_mib": round(peak_rss_mib(resource.RUSAGE_SELF)),
        "features_if_held_in_memory_mib": round(images * views * dim * 4 / 2**20),
    }


__all__ = ["StandInBackbone", "StandInViews", "rewrite_scheme_bytes", "run_cache_benchmark", "written_bytes"]
