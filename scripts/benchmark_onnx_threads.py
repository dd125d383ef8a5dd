"""How ONNX Runtime's idle threads should wait: the int8 pipeline and its bare forward for each configuration, timed
in turn in one process. Writes benchmarks/onnx_threads.json.

    nice -n 10 python scripts/benchmark_onnx_threads.py [--data ../shared/data/eyepacs-256]
    python scripts/benchmark_onnx_threads.py --quick --output /tmp/threads.json   # tiny model: a shape check

About a minute at ViT-B/16 size on 2 cores, plus building the random model folder and its export.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import tempfile

from benchmarks.inference import REFERENCE_TRAIN_SIZE, _small_jpegs, build_model_folder
from benchmarks.machine import machine_info, usable_cpus
from benchmarks.onnx_threads import format_table, run_onnx_threads
from retinascan_hf.atomic_io import write_json_atomically


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="Graded photographs; the first JPEG is used.")
    parser.add_argument("--quick", action="store_true", help="Tiny model and a synthetic picture (seconds).")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: usable cores).")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/onnx_threads.json"))
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    threads = args.threads if args.threads is not None else (1 if args.quick else usable_cpus())
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        jpegs = sorted(args.data.rglob("*.jpeg")) if args.data is not None else _small_jpegs(scratch, 1)
        if not jpegs:
            parser.error(f"no .jpeg files under {args.data}")
        model_dir = build_model_folder(scratch / "model", args.quick, 2_000 if args.quick else REFERENCE_TRAIN_SIZE)
        rounds = 2 if args.quick else 12
        results = run_onnx_threads(model_dir, jpegs[0], threads=threads, rounds=rounds)
    results.update(
        mode="quick" if args.quick else "full",
        model="tiny random CLIP" if args.quick else "random-weight ViT-B/16, 224 px, int8 ONNX",
        image=jpegs[0].name,
        machine=machine_info(),
    )
    print(format_table(results))
    print(f"wrote {write_json_atomically(args.output, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
