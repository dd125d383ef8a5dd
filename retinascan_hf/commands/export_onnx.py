"""`retinascan export-onnx --model DIR [--int8]`: argument parsing only; the work is `onnx_export.export_onnx`."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `export-onnx` to the top-level `retinascan` parser."""
    parser = subparsers.add_parser(
        "export-onnx",
        help="Export a saved model to ONNX (fp32, optionally int8) for `backend='onnx'`.",
        description="Writes DIR/onnx/model.onnx (and with --int8 model_int8.onnx) and export_config.json, which "
        "records the opset, library versions and the sha256 of the weights exported.",
        epilog="exit status: 0 exported; 2 an error stopped the command (one line on stderr).",
    )
    parser.add_argument("--model", required=True, help="Saved model folder (weights, config, processor).")
    parser.add_argument("--int8", action="store_true", help="Also write an int8 graph quantised by ONNX Runtime.")
    parser.add_argument("--output", default=None, help="Folder for the ONNX files (default: MODEL/onnx).")
    parser.add_argument(
        "--quantization",
        choices=("dynamic", "static"),
        default="dynamic",
        help="int8 method (default dynamic: no calibration data needed, and as accurate; see README Benchmarks).",
    )
    parser.add_argument(
        "--calibration-data", default=None, help="Corpus folder or image folder for --quantization static."
    )
    parser.add_argument("--calibration-size", type=int, default=128, help="Calibration images (static only).")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export; an error propagates to `retinascan`'s one-line error report (exit status 2)."""
    from ..onnx_export import export_onnx

    record = export_onnx(
        args.model,
        args.output,
        int8=args.int8,
        quantization=args.quantization,
        calibration_data=args.calibration_data,
        calibration_size=args.calibration_size,
    )
    print(json.dumps({"variants": record.variants, "opset": record.opset, "parity": record.parity}, indent=2))
    return 0


__all__ = ["register", "run"]
