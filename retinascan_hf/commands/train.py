"""`retinascan train`: argument parsing only; the work is `retinascan_hf.training.run_training`."""

from __future__ import annotations

import argparse
import sys

from ..training.config import TrainingConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` to the top-level `retinascan` parser."""
    train = subparsers.add_parser(
        "train",
        help="Train, calibrate and export a model from a corpus folder (see also scripts/train.py).",
        description="Same as `accelerate launch scripts/train.py`: flags override --config (YAML), which "
        "overrides the reference defaults.",
    )
    TrainingConfig.add_arguments(train)
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Parse the configuration (a bad value exits 2 with its message), train, print the summary."""
    from ..training.evaluation import format_evaluation
    from ..training.run import run_training

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


__all__ = ["register", "run_train"]
