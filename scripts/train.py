"""Train a RetinaScan model: `accelerate launch scripts/train.py --config cfg.yaml --data DIR --output-dir OUT`.

The same as `retinascan train` (flags, errors, `--debug`), for launchers that want a script path:
`accelerate launch` on one or N GPUs (or machines), `torchrun --nproc_per_node N` on CPUs (see README,
"Training on several processes / machines"). `--backbone tiny` uses a random tiny CLIP built offline instead of
`openai/clip-vit-base-patch16`. Every `TrainingConfig` field is a flag (`--help`); flags override the YAML
file, which overrides the reference defaults. All logic lives in `retinascan_hf.training`.
"""

import sys

from retinascan_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
