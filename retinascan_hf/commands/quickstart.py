"""`retinascan quickstart`: argument parsing only; the work is `retinascan_hf.training.quickstart`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `quickstart` to the top-level `retinascan` parser."""
    quick = subparsers.add_parser(
        "quickstart",
        help="Synthetic corpus -> tiny CLIP -> train -> calibrate -> bank -> evaluate -> pipeline, offline, ~1 min.",
        description="Run the whole training workflow on procedural fundus-like images with a tiny random CLIP: "
        "no data, no network. Shows that every stage works, not accuracy.",
    )
    quick.add_argument("--output-dir", default="retinascan-quickstart", help="default: ./retinascan-quickstart")
    quick.add_argument("--seed", type=int, default=0, help="default: 0")
    quick.add_argument("--no-progress", dest="progress", action="store_false", help="hide every progress bar")
    quick.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.quickstart import quickstart

    quickstart(args.output_dir, seed=args.seed, progress=args.progress, log=print)
    return 0
