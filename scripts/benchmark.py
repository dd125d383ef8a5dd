"""The benchmark: one table, `benchmarks/results.json`, and the README's performance table generated from it.

    make benchmark                      # = python scripts/benchmark.py
    python scripts/benchmark.py --quick --output /tmp/results.json --no-readme   # tiny model, seconds (CI)

Real ViT-B/16 size with random weights (speed does not depend on their values), all threads by default. Real
inputs come from ../shared/data when present (256-px EyePACS JPEGs, 12-MP camera originals); synthetic
stand-ins otherwise. Every ratio's numerator and denominator are measured in this run; medians over repeats
after warm-up. On a shared machine the load average (recorded) says how far to trust the absolute numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import tempfile

import torch

from benchmarks.head_training import head_training_rows
from benchmarks.inference import REFERENCE_TRAIN_SIZE, InferenceSettings, run_inference_suite
from benchmarks.machine import machine_info
from benchmarks.results import SCHEMA_VERSION, format_table, update_readme, validate_results
from retinascan_hf.atomic_io import write_json_atomically

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny model and small inputs: seconds, for CI.")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--threads", type=int, default=None, help="Threads for torch and ONNX Runtime (default: all cores; quick: 1)."
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results.json")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    parser.add_argument("--no-readme", action="store_true", help="Do not rewrite the README's table.")
    parser.add_argument("--skip-training", action="store_true", help="Skip the head-training rows (minutes).")
    parser.add_argument("--skip-large-bank", action="store_true", help="Skip the 1M-row kNN bank (~3 GB).")
    args = parser.parse_args(argv)

    # Quick mode is a shape check that must stay fast on a loaded CI machine, where waiting for a second thread
    # costs more than it brings.
    threads = args.threads or (1 if args.quick else torch.get_num_threads())
    settings = InferenceSettings.for_mode(args.quick, threads, args.skip_large_bank)
    camera = sorted((args.data / "eyepacs-originals" / "train").glob("*.jpeg"))[:3] if not args.quick else []
    small = sorted((args.data / "eyepacs-256" / "train").glob("*.jpeg"))[:32] if not args.quick else []
    with tempfile.TemporaryDirectory() as scratch:
        rows, compute = run_inference_suite(Path(scratch), settings, camera, small)
        if not args.skip_training:
            size, epochs = (400, 2) if args.quick else (REFERENCE_TRAIN_SIZE, 50)
            rows += head_training_rows(Path(scratch) / "training", train_size=size, num_epochs=epochs)
    results = {
        "schema_version": SCHEMA_VERSION,
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "settings": {
            "threads": settings.threads,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "model": "tiny CLIP (32 px)" if args.quick else "CLIP ViT-B/16, 224 px, random weights",
            "bank_rows": settings.bank_size,
            "camera_photos": [path.name for path in camera] or "synthetic stand-in",
            "small_jpegs": "eyepacs-256" if small else "synthetic 256 px",
        },
        "compute": compute,
        "rows": [row.to_json() for row in rows],
    }
    validate_results(results)
    print(format_table(results))
    print(f"\nwrote {write_json_atomically(args.output, results)}")
    if not args.no_readme:
        changed = update_readme(args.readme, results)
        print(f"{'updated' if changed else 'unchanged'}: {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
