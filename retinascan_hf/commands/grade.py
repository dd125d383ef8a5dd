"""`retinascan grade MODEL IMAGE...`: grade fundus photographs with a saved model, one JSON line each."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("grade", help="Grade fundus photographs with a saved RetinaScan model.")
    parser.add_argument("model", help="Model folder or Hub repo id (holding weights, processor and bank).")
    parser.add_argument("images", nargs="+", help="Image paths or URLs.")
    parser.add_argument("--mode", choices=("knn", "ordinal", "prototype"), default=None)
    parser.add_argument("--k", type=int, default=None, help="Neighbours for mode=knn (default: the config's).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--revision", default=None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..loading import load_pipeline

    try:
        grader = load_pipeline(args.model, revision=args.revision)
    except (OSError, ValueError) as error:  # a missing, corrupt or tampered model folder: say which file, exit 2
        print(f"retinascan grade: cannot load {args.model}: {error}", file=sys.stderr)
        return 2
    options = {key: value for key, value in (("mode", args.mode), ("k", args.k)) if value is not None}
    results = grader(args.images, batch_size=args.batch_size, **options)
    for image, result in zip(args.images, results, strict=True):
        print(json.dumps(json_safe({"image": image, **result}), allow_nan=False))
    return 0 if all(result["gradable"] for result in results) else 1


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by `None`: strict JSON has no NaN, and consumers choke on it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
