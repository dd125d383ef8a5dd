"""Benchmark `retinascan data build` at 10k, 30k and 100k images, with and without --image-size.

    nice -n 10 python scripts/make_large_corpus.py --out /tmp/retinascan-large --count 100000
    nice -n 10 python scripts/benchmark_corpus_scale.py --corpus /tmp/retinascan-large

Each build runs in its own process (peak RSS is per build). Prints one JSON line per build and writes
benchmarks/corpus_scale.json: wall time, images/s, peak RSS (build process and largest worker), output size,
per-image time at each size (linear time) and peak RSS at each size (flat memory); plus a build of the
camera originals with --image-size 512 and the extrapolated time of a full 88,702-image EyePACS build.
Builds go to --scratch (outside the repository), each removed once measured. Not run in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import json

from benchmarks.corpus_scale import run
from benchmarks.machine import machine_info
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="made by scripts/make_large_corpus.py")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--image-size", type=int, default=256, help="preprocessed size (generated images are 256 px)")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--originals", type=Path, default=Path("../shared/data/eyepacs-originals"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/retinascan-corpus-scale"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/corpus_scale.json"))
    args = parser.parse_args()
    results = run(args)
    results["machine_info"] = machine_info()
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {write_json_atomically(args.output, results)}")


if __name__ == "__main__":
    main()
