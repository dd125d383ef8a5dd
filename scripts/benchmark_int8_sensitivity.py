"""Which image-tower layers int8 error comes from: each group kept in float32 in turn, error and speed against the
default int8 export. Writes benchmarks/int8_sensitivity.json.

    nice -n 10 python scripts/benchmark_int8_sensitivity.py [--data ../shared/data/eyepacs-256] [--images 64]
    python scripts/benchmark_int8_sensitivity.py --quick --output /tmp/int8.json   # tiny model: a shape check

A few minutes at ViT-B/16 size on 2 cores (nine quantisations of the 350 MB graph).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import tempfile

from benchmarks.int8_sensitivity import format_table, run_int8_sensitivity
from benchmarks.machine import machine_info
from retinascan_hf.atomic_io import write_json_atomically

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="Photographs (a folder, searched recursively).")
    parser.add_argument("--images", type=int, default=64, help="How many, spread evenly over the sorted files.")
    parser.add_argument("--quick", action="store_true", help="Tiny model and synthetic pictures (seconds).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/int8_sensitivity.json"))
    args = parser.parse_args(argv)
    chosen, source = [], "synthetic fundus pictures"
    if args.data is not None:
        files = sorted(path for path in args.data.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            parser.error(f"no images under {args.data}")
        chosen = files[:: max(1, len(files) // args.images)][: args.images]
        source = f"{len(chosen)} photographs of {args.data}, evenly spaced in name order"
    with tempfile.TemporaryDirectory() as scratch:
        results = run_int8_sensitivity(scratch, chosen, quick=args.quick, threads=args.threads)
    results.update(mode="quick" if args.quick else "full", data=source, machine=machine_info())
    print(format_table(results))
    print(f"wrote {write_json_atomically(args.output, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
