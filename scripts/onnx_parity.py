"""int8 vs fp32 ONNX parity on the real EyePACS-256 photographs at ViT-B/16 size: writes benchmarks/onnx_parity.json.

    nice -n 10 python scripts/onnx_parity.py [--data ../shared/data/eyepacs-256] [--work-dir DIR]

About 2,700 preprocessed photographs through fp32 and two int8 graphs (half of them for the bank): tens of
minutes on 2 cores. `--work-dir` keeps the model, the exports and each half's outputs, so a killed run resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import json
import tempfile

from benchmarks.onnx_parity import run_onnx_parity
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/eyepacs-256"))
    parser.add_argument("--work-dir", type=Path, default=None, help="Keep exports and outputs here (resumable).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: torch's).")
    parser.add_argument("--no-static", action="store_true", help="Skip the static int8 variant.")
    parser.add_argument("--limit-patients", type=int, default=None, help="Only the first N patients (a quick check).")
    parser.add_argument(
        "--trained-heads",
        action="store_true",
        help="Also compare after training the heads on the bank half's fp32 features (seconds; the graphs' outputs "
        "are reused).",
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/onnx_parity.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = run_onnx_parity(
            args.data,
            args.work_dir or scratch,
            batch_size=args.batch_size,
            threads=args.threads,
            static=not args.no_static,
            limit_patients=args.limit_patients,
            trained_heads=args.trained_heads,
        )
    print(json.dumps({key: results[key] for key in ("comparisons", "trained_heads") if key in results}, indent=2))
    print(f"wrote {write_json_atomically(args.output, results)}")


if __name__ == "__main__":
    main()
