"""Peak memory of decoding bomb-sized but legal images (96 MP PNG/JPEG), with and without the pixel budget.

python scripts/benchmark_decode_memory.py [--photo ../shared/data/eyepacs-originals/train/10_left.jpeg]

Prints a table and writes benchmarks/decode_memory.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import tempfile
from pathlib import Path

from benchmarks.decode_memory import format_table, run_decode_memory_benchmark, to_json
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, default=Path("../shared/data/eyepacs-originals/train/10_left.jpeg"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/decode_memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        cases = run_decode_memory_benchmark(Path(work), args.photo if args.photo.is_file() else None)
    print(format_table(cases))
    print(f"\nwrote {write_json_atomically(args.output, to_json(cases))}")


if __name__ == "__main__":
    main()
