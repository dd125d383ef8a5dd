"""`retinascan evaluate`: argument parsing only; the work is `retinascan_hf.evaluation.evaluate_model`."""

from __future__ import annotations

import argparse
import sys

from ..metrics.summary import DEFAULT_RESAMPLES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `evaluate` to the top-level `retinascan` parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="Grade a corpus split in every decision mode; write report.json, report.md and plots.",
        description="Computes backbone features once (reusing the training feature cache), then grades with "
        "zero-shot CLIP, the prototype head, the ordinal head before and after calibration, kNN and their "
        "ensemble; reports QWK, accuracy, screening figures with bootstrap intervals, calibration and grade sets.",
    )
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    parser.add_argument("--data", required=True, help="Corpus folder (a DatasetDict from `retinascan data build`).")
    parser.add_argument("--split", default="test", help="default: test")
    parser.add_argument("--output-dir", required=True, help="Receives report.json, report.md and the PNG plots.")
    parser.add_argument("--revision", default=None, help="Model revision (Hub repos).")
    parser.add_argument("--cache-dir", default=None, help="Feature cache root (default: training's shared cache).")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per backbone forward (default: 32).")
    parser.add_argument("--n-bootstrap", type=int, default=DEFAULT_RESAMPLES, help="Bootstrap resamples (0: none).")
    parser.add_argument("--seed", type=int, default=0, help="Bootstrap seed (default: 0).")
    parser.add_argument("--coverage", type=float, default=None, help="Grade-set coverage (default: the model's).")
    parser.add_argument("--cpu", action="store_true", help="Compute on the CPU even where a GPU is present.")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="Hide the progress bar.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the settings (a bad value exits 2 with its message), evaluate, print the table and the files."""
    from ..evaluation import EvaluationSettings, evaluate_model
    from ..evaluation.report import main_table

    try:
        settings = EvaluationSettings(
            split=args.split,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            coverage=args.coverage,
            cpu=args.cpu,
            progress=args.progress,
            revision=args.revision,
        )
    except ValueError as error:
        print(f"retinascan evaluate: {error}", file=sys.stderr)
        return 2
    result = evaluate_model(args.model, args.data, args.output_dir, settings)
    print(main_table(result.report))
    print("\n".join(f"wrote {path}" for path in result.files.values() if path))
    return 0


__all__ = ["register", "run"]
