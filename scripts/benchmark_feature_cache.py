"""Benchmark filling the feature cache at 100,000 images (stand-in backbone): bytes written vs cache size.

    nice -n 10 python scripts/benchmark_feature_cache.py [--images 100000] [--views 4] [--dtype float16]

Writes benchmarks/feature_cache_scale.json: fill time, images/s, chunks, cache size, bytes written (from
/proc/self/io), what the previous rewrite-the-shard scheme would have written, and peak RSS next to what
holding every feature in memory would take. The cache goes to a temporary folder, removed afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import json
import tempfile

from benchmarks.feature_cache_scale import run_cache_benchmark
from benchmarks.machine import machine_info
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/feature_cache_scale.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="retinascan-cache-bench-") as scratch:
        results = run_cache_benchmark(args.images, args.views, args.dim, args.dtype, Path(scratch))
    results["machine"] = machine_info()
    print(json.dumps(results, indent=2))
    print(f"wrote {write_json_atomically(args.output, results)}")


if __name__ == "__main__":
    main()
