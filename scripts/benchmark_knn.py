"""Benchmark exact kNN over 16,231 x 512 and 1,000,000 x 512 feature banks (single query, 2 threads).

    nice -n 10 python scripts/benchmark_knn.py [--sizes 16231 1000000] [--threads 2]

Writes benchmarks/knn.json: per bank size and data kind, the median single-query time next to a float32
brute-force scan and an fp16 scan measured in the same run, batch-of-32 time per query, build/save/load
times, file size and resident memory after loading and after the first query (which builds the int8
codes), where a query's time goes (int8 scan vs re-rank, candidates re-ranked), the machine's read
bandwidth and CPU flags. Targets (issue 10): <= 1 ms at 16,231 rows, <= 50 ms at 1,000,000.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse

from benchmarks.knn import MILLION, REFERENCE_BANK, run_knn_benchmark
from benchmarks.machine import machine_info
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[REFERENCE_BANK, MILLION])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/knn.json"))
    args = parser.parse_args()
    results = run_knn_benchmark(args.sizes, args.dim, args.k, args.repeats, args.threads)
    results["machine"] = machine_info()
    print(f"read bandwidth {results['read_bandwidth_gib_s']} GiB/s, {args.threads} threads")
    print(f"{'rows':>9} {'data':>9} {'query ms':>9} {'fp32 scan':>9} {'fp16 scan':>9} {'exact':>7}")
    for row in results["banks"]:
        print(
            f"{row['rows']:>9} {row['data']:>9} {row['query_ms']:>9} {row['baseline_fp32_scan_ms']:>9} "
            f"{row['fp16_scan_ms']:>9} {row['queries_matching_brute_force']:>7}"
        )
    print(f"wrote {write_json_atomically(args.output, results)}")


if __name__ == "__main__":
    main()
