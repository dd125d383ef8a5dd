"""`retinascan explain IMAGE... --model DIR --output-dir OUT`: Grad-CAM panels, one PNG and JSON line per image."""

from __future__ import annotations

import argparse
import json

from .grade import EXIT_UNGRADABLE, resolve_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="Grade fundus photographs and save Grad-CAM panels (original | heat map | overlay).",
        description="For each image: one PNG (OUT/<name>.gradcam.png) with the cropped fundus the model saw, the "
        "Grad-CAM heat map of the decided grade (or --grade) and their overlay, and one JSON line, printed and "
        "written to OUT/explanations.jsonl.",
        epilog=f"exit status: 0 every image explained; {EXIT_UNGRADABLE} all images processed but at least one was "
        "ungradable (its line has gradable: false and the reason, and it has no PNG); 2 an error stopped the command "
        "(one line on stderr).",
    )
    parser.add_argument("images", nargs="+", help="image paths or URLs")
    parser.add_argument(
        "--model",
        required=True,
        help="model folder, the output folder of `retinascan train` (its model/ subfolder is used), or a Hub repo id",
    )
    parser.add_argument("--output-dir", required=True, help="folder for the PNG panels and explanations.jsonl")
    parser.add_argument("--mode", choices=("knn", "ordinal", "prototype"), default=None)
    parser.add_argument("--grade", type=int, default=None, help="explain this grade instead of the decided one")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--panel-size", type=int, default=256, help="side of each panel in pixels (default: 256)")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of the model")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import explain_images
    from ..loading import load_pipeline
    from ..progress import progress_bars

    with progress_bars(args.progress):
        grader = load_pipeline(resolve_model(args.model), revision=args.revision)
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
    return 0 if all(record["gradable"] for record in records) else EXIT_UNGRADABLE
