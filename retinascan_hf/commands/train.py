"""`retinascan train`: argument parsing only; the work is `retinascan_hf.training.run_training`.

The flags come from `TrainingConfig` through `transformers.HfArgumentParser`, which needs transformers
imported: so the top-level parser only reserves the sub-command and hands every argument after `train` to
`TrainingConfig.parse_args` when the command runs (`retinascan --help` stays free of transformers).
"""

from __future__ import annotations

import argparse

PROG = "retinascan train"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` to the top-level `retinascan` parser; `retinascan train --help` lists its flags."""
    train = subparsers.add_parser(
        "train",
        help="Train, calibrate and export a model from a corpus folder (`retinascan train --help` for its flags).",
        add_help=False,  # --help is answered by the full parser, in run_train
    )
    train.set_defaults(func=run_train, passes_arguments_on=True)


def run_train(args: argparse.Namespace) -> int:
    """Parse the configuration (flags, `--config` YAML), train, print the summary (main process)."""
    from ..training.config import TrainingConfig

    config = TrainingConfig.parse_args(args.passed_on, prog=PROG)
    from ..training.evaluation import format_evaluation
    from ..training.run import run_training

    result = run_training(config)
    if result.trainer.accelerator.is_main_process:
        evaluation = result.metrics["evaluation"]
        for split in ("validation", "test"):
            if split in evaluation:
                print(f"{split}:\n{format_evaluation(evaluation[split])}")
        print(f"Model folder: {result.model_dir}\nMetrics: {result.model_dir.parent / 'metrics.json'}")
    return 0


__all__ = ["register", "run_train"]
