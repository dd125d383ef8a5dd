"""`retinascan grade MODEL IMAGE...`: grade fundus photographs with a saved model, one JSON line each."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXIT_UNGRADABLE = 1
RUN_MODEL_SUBFOLDER = "model"  # where `retinascan train` puts the model folder inside its output folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "grade",
        help="Grade fundus photographs with a saved RetinaScan model.",
        description="Print one JSON line (strict JSON: never NaN) per image: grade, label, scores, referable, mode, "
        "gradable, ood_score, reason and error_type (the last two say why an image was not graded).",
        epilog=f"exit status: 0 every image graded; {EXIT_UNGRADABLE} all images processed but at least one was "
        "ungradable (its line has gradable: false and the reason); 2 an error stopped the command (one line on "
        "stderr).",
    )
    parser.add_argument(
        "model",
        help="model folder (config.json, weights, processor, bank), the output folder of `retinascan train` (its "
        "model/ subfolder is used), or a Hub repo id",
    )
    parser.add_argument("images", nargs="+", help="image paths or URLs")
    parser.add_argument("--mode", choices=("knn", "ordinal", "prototype"), default=None)
    parser.add_argument("--k", type=int, default=None, help="neighbours for mode=knn (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of the model")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars, not even for a Hub download (loading weights never shows one)",
    )
    parser.set_defaults(func=run)


def resolve_model(argument: str) -> str:
    """The model folder or Hub repo id that `argument` names.

    A local folder must hold `config.json`; the output folder of a training run is accepted for its `model/`
    subfolder. A path that does not exist is an error, unless it could be a Hub repo id (`name` or
    `namespace/name`), which is then what it is taken for.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    from transformers.utils import CONFIG_NAME

    path = Path(argument).expanduser()
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            return str(path)
        if (path / RUN_MODEL_SUBFOLDER / CONFIG_NAME).is_file():
            logger.info("%s is a training run's folder: using its model folder %s.", path, path / RUN_MODEL_SUBFOLDER)
            return str(path / RUN_MODEL_SUBFOLDER)
        raise FileNotFoundError(
            f"{path} is not a model folder: it has no {CONFIG_NAME} (nor {RUN_MODEL_SUBFOLDER}/{CONFIG_NAME}). Pass "
            f"the folder `retinascan train` wrote (OUT or OUT/{RUN_MODEL_SUBFOLDER}) or a Hub repo id."
        )
    if path.exists():
        raise FileNotFoundError(f"{path} is a file, not a model folder: pass the folder that holds {CONFIG_NAME}.")
    try:
        validate_repo_id(argument)
    except HFValidationError:
        raise FileNotFoundError(
            f"model folder {path} does not exist (and {argument!r} is not a Hub repo id): check the path."
        ) from None
    return argument


def run(args: argparse.Namespace) -> int:
    from ..loading import load_pipeline
    from ..progress import progress_bars

    source = resolve_model(args.model)
    local = os.path.isdir(source)
    with progress_bars(False, downloads=args.progress):
        try:
            grader = load_pipeline(source, revision=args.revision)
        except OSError as error:
            if local:
                raise
            raise OSError(f"{source!r} is not a local folder, and loading it from the Hub failed: {error}") from error
    options = {key: value for key, value in (("mode", args.mode), ("k", args.k)) if value is not None}
    results = grader(args.images, batch_size=args.batch_size, **options)
    for image, result in zip(args.images, results, strict=True):
        print(json.dumps(json_safe({"image": image, **result}), allow_nan=False))
    return 0 if all(result["gradable"] for result in results) else EXIT_UNGRADABLE


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by `None`: strict JSON has no NaN, and consumers choke on it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
