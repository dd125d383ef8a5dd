"""`retinascan demo --model DIR_OR_REPO`: serve the Gradio demo (needs `pip install retinascan-hf[demo]`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Serve a Gradio page: upload a fundus photo, see grade, probabilities, referable flag and neighbours.",
    )
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) to load.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=7860, help="Port (default 7860).")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import build_demo
    from ..loading import load_pipeline

    build_demo(load_pipeline(args.model, revision=args.revision)).launch(server_name=args.host, server_port=args.port)
    return 0
