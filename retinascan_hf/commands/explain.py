"""`retinascan explain IMAGE... --model DIR --output-dir OUT`: Grad-CAM panels, one PNG and JSON line per image."""

from __future__ import annotations

import argparse
import json
import sys

from ..gradcam_retinascan import PANEL_SIZE_RANGE, check_target_grade


def _int_between(low: int, high: int):
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must lie in [{low}, {high}], got {value}")
        return value

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="Grade fundus photographs and save Grad-CAM panels (original | heat map | overlay).",
        description="For each image: one PNG with the cropped fundus the model saw, its Grad-CAM heat map for the "
        "decided grade (or --grade) and the overlay, and one JSON line (printed, and in OUT/explanations.jsonl).",
    )
    parser.add_argument("images", nargs="+", help="Image paths or URLs.")
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id (weights, processor, bank).")
    parser.add_argument("--output-dir", required=True, help="Folder for the PNG panels and explanations.jsonl.")
    parser.add_argument("--mode", choices=("knn", "ordinal", "prototype"), default=None)
    parser.add_argument("--grade", type=int, default=None, help="Explain this grade instead of the decided one.")
    parser.add_argument("--batch-size", type=_int_between(1, 4096), default=8)
    parser.add_argument(
        "--panel-size", type=_int_between(*PANEL_SIZE_RANGE), default=256, help="Side of each panel in px (256)."
    )
    parser.add_argument("--revision", default=None)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import explain_images
    from ..loading import load_pipeline

    grader = load_pipeline(args.model, revision=args.revision)
    if args.grade is not None:
        try:
            check_target_grade(args.grade, grader.model.config.num_labels)
        except ValueError as error:
            print(f"retinascan explain: --grade: {error}", file=sys.stderr)
            return 2
    records = explain_images(
        grader,
        args.images,
        args.output_dir,
        mode=args.mode,
        heatmap_grade=args.grade,
        batch_size=args.batch_size,
        panel_size=args.panel_size,
        progress=args.progress,
    )
    for record in records:
        print(json.dumps(record))
    return 0 if all(record["gradable"] for record in records) else 1
