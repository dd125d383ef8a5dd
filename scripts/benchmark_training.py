"""Benchmark training at the reference size: prints tables and writes benchmarks/training.json.

50 epochs of head training on 16,231 cached 512-d features versus pushing the images through a real-size
ViT-B/16 every epoch (extrapolated from measured forwards), all measured in the same run on this machine.

python scripts/benchmark_training.py [--train-size 16231] [--epochs 50] [--batch-size 16]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import tempfile
from pathlib import Path

from benchmarks.training import format_summary, run_training_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=16_231)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/training.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        report, summary = run_training_benchmark(
            work_dir, train_size=args.train_size, num_epochs=args.epochs, n_views=args.views, batch_size=args.batch_size
        )
    print(report.table())
    print()
    print(format_summary(summary))
    print(f"\nwrote {report.write_json(args.output, extra={'summary': summary})}")


if __name__ == "__main__":
    main()
