"""Benchmark inference at real ViT-B/16 size: prints a table and writes benchmarks/inference.json.

python scripts/benchmark_inference.py [--photos ../shared/data/eyepacs-originals/train]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
from pathlib import Path

from benchmarks.inference import run_inference_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/eyepacs-originals/train"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/inference.json"))
    args = parser.parse_args()
    photos = sorted(args.photos.glob("*.jpeg")) if args.photos.is_dir() else []
    report = run_inference_benchmark(photos, batch_size=args.batch_size)
    print(report.table())
    print(f"\nwrote {report.write_json(args.output)}")


if __name__ == "__main__":
    main()
