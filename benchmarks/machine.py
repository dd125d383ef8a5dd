"""What a benchmark ran on: CPU model and the instruction-set flags that decide CPU inference speed, cores,
threads, library versions and the date. Every results file carries this, since a number without its machine
says little (int8 runs 2-4x faster with AVX-512 VNNI or AMX; bf16 is only fast with AVX-512 BF16 or AMX).
"""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata

import torch

# Flags that change which kernels run: AVX2 (baseline SIMD), AVX-512 (wider), VNNI (int8 dot products),
# BF16 (bf16 dot products), AMX (matrix tiles for int8/bf16).
CPU_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
LIBRARIES: tuple[str, ...] = ("torch", "transformers", "onnx", "onnxruntime", "numpy", "pillow")


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (Linux), as a dict; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            block = handle.read().split("\n\n")[0]
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}


def cpu_flags() -> dict[str, bool]:
    """Which of [`CPU_FLAGS`] this CPU reports."""
    present = set(_cpuinfo().get("flags", "").split())
    return {flag: flag in present for flag in CPU_FLAGS}


def has_fast_bf16() -> bool:
    """Whether bf16 matmuls have hardware support here (otherwise torch emulates them, slower than fp32)."""
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def memory_gib() -> float | None:
    """Total memory (Linux /proc/meminfo), GiB."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            return round(int(handle.readline().split()[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info() -> dict:
    """CPU model, flags, logical CPUs (and those this process may use), memory, torch threads, versions, UTC date."""
    info = _cpuinfo()
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "memory_gib": memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "libraries": library_versions(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["CPU_FLAGS", "cpu_flags", "has_fast_bf16", "library_versions", "machine_info", "memory_gib"]
