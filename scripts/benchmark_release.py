"""Release sizes at real ViT-B/16 size and float16-storage grade agreement on real photos.

    python scripts/benchmark_release.py [--photos ../shared/data/eyepacs-256/train] [--limit 200]

Prints the figures and writes benchmarks/release.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import json

from benchmarks.release import run_release_benchmark
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/eyepacs-256/train"))
    parser.add_argument("--limit", type=int, default=200, help="photos to grade (sorted by name)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/release.json"))
    args = parser.parse_args()
    photos = sorted(args.photos.glob("*.jpeg"))[: args.limit]
    results = run_release_benchmark(photos)
    print(json.dumps(results, indent=2))
    print(f"wrote {write_json_atomically(args.output, results)}")


if __name__ == "__main__":
    main()
