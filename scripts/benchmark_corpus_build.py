"""What building the corpus from a real layout costs: wall time, peak RSS, size on disk.

    python scripts/benchmark_corpus_build.py --eyepacs ../shared/data/eyepacs-256 --num-proc 2

Prints the numbers and writes them to benchmarks/corpus_build.json.

Peak RSS is reported for this process (which holds only paths and the Arrow writer's batches)
and for the largest image-checking worker, next to the RSS before the build, which is the
imported stack (``retinascan_hf`` pulls in torch and transformers).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from benchmarks.timing import machine_summary, peak_rss_mib
from retinascan_hf.atomic_io import write_json_atomically
from retinascan_hf.corpus import build_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eyepacs", type=Path, default=Path("../shared/data/eyepacs-256"))
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/corpus_build.json"))
    args = parser.parse_args()
    rss_before = peak_rss_mib(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "corpus"
        start = time.perf_counter()
        report = build_corpus({"eyepacs": args.eyepacs}, out, num_proc=args.num_proc, progress=False)
        wall = time.perf_counter() - start
        on_disk = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    source_bytes = sum(path.stat().st_size for path in (args.eyepacs / "train").glob("*.jpeg"))
    results = {
        "images_kept": report.num_kept,
        "num_proc": args.num_proc,
        "wall_s": round(wall, 2),
        "images_per_s": round(report.num_kept / wall),
        "rss_before_build_mib": round(rss_before),
        "peak_rss_mib": round(peak_rss_mib(resource.RUSAGE_SELF)),
        "peak_worker_rss_mib": round(peak_rss_mib(resource.RUSAGE_CHILDREN)),
        "output_mib": round(on_disk / 2**20, 1),
        "source_images_mib": round(source_bytes / 2**20, 1),
        "machine": machine_summary(),
    }
    print(json.dumps(results, indent=2))
    print(f"wrote {write_json_atomically(args.output, results)}")


if __name__ == "__main__":
    main()
