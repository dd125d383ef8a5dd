"""Gradability checks: non-fundus pictures flagged vs real fundus photos flagged; writes benchmarks/gradability.json.

python scripts/benchmark_gradability.py [--real-data ../shared/data] [--per-kind 40]

Trains the quickstart model and a tiny EyePACS model in a temporary folder (a few minutes on 2 cores), then
regenerates README's flag-rate table.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
from pathlib import Path

from benchmarks.gradability import README_BLOCK, format_summary, render_readme_table, run_gradability_benchmark
from benchmarks.readme_blocks import replace_block
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--per-kind", type=int, default=40, help="Non-fundus pictures per kind.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/gradability.json"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="Whose flag-rate table to regenerate.")
    args = parser.parse_args()
    summary = run_gradability_benchmark(args.real_data, per_kind=args.per_kind, seed=args.seed)
    print(format_summary(summary))
    print(f"\nwrote {write_json_atomically(args.output, summary)}")
    if replace_block(args.readme, README_BLOCK, render_readme_table(summary)):
        print(f"updated the flag-rate table in {args.readme}")


if __name__ == "__main__":
    main()
