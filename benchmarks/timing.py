"""Timing helpers for the benchmark scripts: repeatable wall-clock medians, results as ratios to a baseline.

Speed is reported against a baseline measured in the same run on the same machine, because absolute
seconds on a shared 2-core CPU say little on their own.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from retinascan_hf.atomic_io import write_json_atomically


@dataclass
class Measurement:
    """One timed operation: median seconds per call over `repeats` calls (after `warmup` calls)."""

    name: str
    seconds: float
    items_per_call: int = 1
    note: str = ""
    ratio_to_baseline: float | None = None

    @property
    def ms_per_item(self) -> float:
        return 1000.0 * self.seconds / self.items_per_call


@dataclass
class BenchmarkReport:
    """Measurements of one run, the baseline they are relative to, and the machine they ran on."""

    title: str
    baseline: str
    measurements: list[Measurement] = field(default_factory=list)

    def add(self, measurement: Measurement) -> Measurement:
        self.measurements.append(measurement)
        return measurement

    def finalize(self) -> None:
        base = next(m for m in self.measurements if m.name == self.baseline)
        for measurement in self.measurements:
            measurement.ratio_to_baseline = measurement.ms_per_item / base.ms_per_item

    def table(self) -> str:
        rows = [f"{self.title} (ratios: per-item time / '{self.baseline}')", ""]
        rows.append(f"{'operation':<52} {'ms/item':>10} {'ratio':>9}  note")
        for m in self.measurements:
            rows.append(f"{m.name:<52} {m.ms_per_item:>10.2f} {m.ratio_to_baseline:>9.3f}  {m.note}")
        rows.append(f"\npeak RSS: {peak_rss_mib():.0f} MiB; {machine_summary()}")
        return "\n".join(rows)

    def write_json(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write the report (and any `extra` top-level fields, e.g. a summary) as JSON, atomically."""
        payload = {
            "title": self.title,
            "baseline": self.baseline,
            "machine": machine_summary(),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "measurements": [{**asdict(m), "ms_per_item": m.ms_per_item} for m in self.measurements],
            **(extra or {}),
        }
        return write_json_atomically(path, payload)


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()`: medians resist the other tenants of a shared machine."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_alternately(
    first: Callable[[], object], second: Callable[[], object], repeats: int = 5, warmup: int = 1, block: int = 5
) -> tuple[float, float]:
    """Median wall-clock seconds of `first()` and of `second()`, `repeats` calls each, in alternating blocks of
    `block` consecutive calls.

    For a ratio of two close times on a shared machine: a neighbour that comes and goes slows both sides alike,
    where two long runs timed one after the other can each catch a different one. Blocks, not single calls in
    turn, so each side runs as it would alone (a call right after the other side's finds the caches holding
    that side's data; the median sets that one call in a block aside).
    """
    for _ in range(warmup):
        first()
        second()
    samples: tuple[list[float], list[float]] = ([], [])
    while len(samples[1]) < repeats:
        for function, times in zip((first, second), samples, strict=True):
            for _ in range(min(block, repeats - len(times))):
                start = time.perf_counter()
                function()
                times.append(time.perf_counter() - start)
    return statistics.median(samples[0]), statistics.median(samples[1])


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or, with `RUSAGE_CHILDREN`, of its largest child), in MiB."""
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def proc_status_mib(field: str) -> float | None:
    """A memory field of Linux's `/proc/self/status` (`VmRSS`: resident now, `VmHWM`: peak), in MiB; None elsewhere."""
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def current_rss_mib() -> float:
    """Resident memory of this process now, in MiB (0.0 where the kernel does not say)."""
    return proc_status_mib("VmRSS") or 0.0


def machine_summary() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
