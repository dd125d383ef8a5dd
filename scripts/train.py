"""Train a RetinaScan model: `accelerate launch scripts/train.py --config cfg.yaml --data DIR --output-dir OUT`.

Runs unchanged on one CPU, one GPU or N GPUs (`accelerate launch --num_processes N`); `--backbone tiny` uses a
random tiny CLIP built offline instead of `openai/clip-vit-base-patch16`. Every `TrainingConfig` field is a
flag (`--help`); flags override the YAML file, which overrides the reference defaults. All logic lives in
`retinascan_hf.training`.
"""

import argparse
import sys

from retinascan_hf.commands.train import run_train
from retinascan_hf.training.config import TrainingConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    TrainingConfig.add_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
