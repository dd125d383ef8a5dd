"""The machine a benchmark ran on: CPU model, the SIMD features that decide kernel speed, cores, memory."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

# CPU flags that change which kernels run: AVX-512 (and its VNNI int8 / BF16 dot products), AVX2, AMX, F16C.
_RELEVANT_FLAGS = (
    "avx2",
    "f16c",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
)


def machine_details() -> dict[str, Any]:
    """CPU model and relevant flags (from /proc/cpuinfo where available), cores, threads, memory, torch."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
    memory = Path("/proc/meminfo")
    total_gib = None
    if memory.is_file():
        total_gib = round(int(memory.read_text().split()[1]) / 2**20, 1)
    return {
        "cpu": model,
        "cpu_flags": [flag for flag in _RELEVANT_FLAGS if flag in flags],
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": total_gib,
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


__all__ = ["machine_details"]
