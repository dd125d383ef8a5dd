"""The ``retinascan`` console script.

Each sub-command is one module of ``retinascan_hf.commands`` exposing ``register(subparsers)``;
this file only assembles them, so the CLI stays a thin argument parser over library calls.
(Importing ``retinascan_hf`` registers the Auto classes, which loads torch and transformers: the
command modules defer only the heavier work of each command to the moment it runs.)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "retinascan_hf.commands.quickstart",
    "retinascan_hf.commands.data",
    "retinascan_hf.commands.train",
    "retinascan_hf.commands.grade",
    "retinascan_hf.commands.export_onnx",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retinascan", description="Diabetic retinopathy grading with transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
