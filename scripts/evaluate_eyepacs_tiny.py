"""Train the offline tiny backbone on the real EyePACS-256 images and record the honest result.

    python scripts/evaluate_eyepacs_tiny.py [--data ../shared/data/eyepacs-256] [--tiny-image-size 128]

Builds the corpus (`retinascan data build`), trains with the reference configuration on a *random* tiny
CLIP, and writes the test evaluation of every decision mode, next to the majority-class baseline, to
benchmarks/eyepacs256_tiny_backbone.json. A random backbone is not expected to see real lesions: this
shows that the real-data path runs end to end, and is not a clinical result.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import tempfile
from pathlib import Path

from benchmarks.eyepacs import train_tiny_on_eyepacs
from benchmarks.timing import machine_summary
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/eyepacs-256"))
    parser.add_argument("--tiny-image-size", type=int, default=128)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/eyepacs256_tiny_backbone.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        metrics = train_tiny_on_eyepacs(args.data, Path(work), image_size=args.tiny_image_size).metrics
    test = metrics["evaluation"]["test"]
    summary = {
        "machine": machine_summary(),
        "tiny_image_size": args.tiny_image_size,
        "images": {name: split["images"] for name, split in metrics["data"].items()},
        "test": {mode: {"qwk": report["qwk"], "accuracy": report["accuracy"]} for mode, report in test.items()},
        "majority_baseline_test": metrics["majority_baseline_test"],
        "timings": metrics["timings"],
    }
    for mode, values in summary["test"].items():
        print(f"{mode:<10} QWK {values['qwk']:+.3f}  accuracy {values['accuracy']:.3f}")
    print(f"majority   {summary['majority_baseline_test']}")
    print(f"wrote {write_json_atomically(args.output, summary)}")


if __name__ == "__main__":
    main()
