"""Benchmark head training on a memory-mapped 1M x 4 views x 512 fp16 feature cache: RSS and step time.

    nice -n 10 python scripts/benchmark_memmap_training.py [--images 1000000] [--steps 2000]

Writes a synthetic cache (about 4 GB) to a temporary folder, trains the real `RetinaScanTrainer` on it
memory-mapped, and writes benchmarks/memmap_training.json: resident memory sampled during the run (total,
anonymous, file-backed), ms per step, and the same steps on an in-memory split as a baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import json

from benchmarks.machine import machine_info
from benchmarks.memmap_training import run_memmap_training
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--chunk-rows", type=int, default=31_250, help="rows per chunk (what caching 1M images writes)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/memmap_training.json"))
    args = parser.parse_args()
    results = run_memmap_training(args.images, args.views, args.dim, args.steps, args.chunk_rows)
    results["machine"] = machine_info()
    print(json.dumps(results, indent=2))
    print(f"wrote {write_json_atomically(args.output, results)}")


if __name__ == "__main__":
    main()
