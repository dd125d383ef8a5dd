"""One photograph in every input form: same picture, scores and grade? Writes benchmarks/input_form_consistency.json.

    nice -n 10 python scripts/input_form_consistency.py [--data ../shared/data]

The 10 camera originals as path, bytes, `datasets` PIL image and numpy array through a random-weight ViT-B/16
(about 300 backbone forwards with the bank: a few minutes on 2 cores), and 500 EyePACS-256 photographs checked for
identical pictures. See `benchmarks/input_forms.py` for the protocol.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse

from benchmarks.input_forms import format_summary, run_input_forms
from retinascan_hf.atomic_io import write_json_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--bank-size", type=int, default=192, help="EyePACS-256 photographs in the feature bank.")
    parser.add_argument("--small-photos", type=int, default=500, help="EyePACS-256 photographs checked for identity.")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/input_form_consistency.json"))
    args = parser.parse_args()
    results = run_input_forms(args.data, bank_size=args.bank_size, small_photos=args.small_photos)
    print(format_summary(results))
    print(f"wrote {write_json_atomically(args.output, results)}")


if __name__ == "__main__":
    main()
