"""Generate a corpus of distinct fundus photographs (default 100,000) from ../shared/data, for scale benchmarks.

    nice -n 10 python scripts/make_large_corpus.py --out /tmp/retinascan-large --count 100000 --num-proc 2

Writes the Kaggle EyePACS layout (trainLabels.csv + train/*.jpeg) under --out, outside the repository (the
images are third-party data: never commit them). A killed run resumes where it stopped. Not run in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import json

from benchmarks.large_corpus import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared real photographs")
    parser.add_argument("--out", type=Path, required=True, help="output folder, outside the repository")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()
    repository = Path(__file__).resolve().parents[1]
    if args.out.resolve().is_relative_to(repository):
        parser.error(f"--out {args.out} is inside the repository; the generated images must stay outside it.")
    print(json.dumps(generate(args.data, args.out, args.count, num_proc=args.num_proc), indent=2))


if __name__ == "__main__":
    main()
