"""`retinascan quickstart` and `retinascan train`: argument parsing only; the work is in the library.

Registering imports only the configuration module; training, corpus and pipeline code load when a command
runs.
"""

from __future__ import annotations

import argparse
import sys

from .config import TrainingConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `quickstart` and `train` to the top-level `retinascan` parser."""
    quick = subparsers.add_parser(
        "quickstart",
        help="Synthetic corpus -> tiny CLIP -> train -> calibrate -> bank -> evaluate -> pipeline, offline, ~1 min.",
        description="Run the whole training workflow on procedural fundus-like images with a tiny random CLIP: "
        "no data, no network. Shows that every stage works, not accuracy.",
    )
    quick.add_argument("--output-dir", default="retinascan-quickstart", help="default: ./retinascan-quickstart")
    quick.add_argument("--seed", type=int, default=0, help="default: 0")
    quick.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    quick.set_defaults(func=run_quickstart)

    train = subparsers.add_parser(
        "train",
        help="Train, calibrate and export a model from a corpus folder (see also scripts/train.py).",
        description="Same as `accelerate launch scripts/train.py`: flags override --config (YAML), which "
        "overrides the reference defaults.",
    )
    TrainingConfig.add_arguments(train)
    train.set_defaults(func=run_train)


def run_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    quickstart(args.output_dir, seed=args.seed, progress=args.progress)
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Parse the configuration (a bad value exits 2 with its message), train, print the summary."""
    from .evaluation import format_evaluation
    from .run import run_training

    try:
        config = TrainingConfig.from_args(args)
    except ValueError as error:
        print(f"retinascan train: {error}", file=sys.stderr)
        return 2
    result = run_training(config)
    if result.trainer.accelerator.is_main_process:
        evaluation = result.metrics["evaluation"]
        for split in ("validation", "test"):
            if split in evaluation:
                print(f"{split}:\n{format_evaluation(evaluation[split])}")
        print(f"Model folder: {result.model_dir}\nMetrics: {result.model_dir.parent / 'metrics.json'}")
    return 0


__all__ = ["register", "run_quickstart", "run_train"]
