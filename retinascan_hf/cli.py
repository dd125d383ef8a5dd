"""The ``retinascan`` console script.

Each sub-command is one module of ``retinascan_hf.commands`` exposing ``register(subparsers)``; this file only
assembles them and owns what every command shares: ``--version``, ``--debug``, log output, and errors. An error
ends the command with one line on stderr (what went wrong, where, what to do) and exit status 2; ``--debug``
(or ``RETINASCAN_DEBUG=1``) re-raises it with its traceback instead. Registering the commands imports neither
torch nor transformers (the package ``__init__`` is lazy and each command imports its libraries when it runs),
so ``retinascan --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "retinascan_hf.commands.quickstart",
    "retinascan_hf.commands.data",
    "retinascan_hf.commands.train",
    "retinascan_hf.commands.grade",
    "retinascan_hf.commands.explain",
    "retinascan_hf.commands.evaluate",
    "retinascan_hf.commands.export_onnx",
    "retinascan_hf.commands.release",
    "retinascan_hf.commands.demo",
)
DEBUG_FLAG = "--debug"
DEBUG_ENV = "RETINASCAN_DEBUG"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EPILOG = (
    f"exit status: 0 success; 1 `grade` or `explain` ran but some images were ungradable (see its --help); "
    f"{EXIT_ERROR} an error (one line on stderr; --debug or {DEBUG_ENV}=1 shows the traceback); {EXIT_INTERRUPTED} "
    "interrupted."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retinascan",
        description="Diabetic retinopathy grading (ICDR 0-4) from fundus photographs with transformers.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help=f"show the traceback of an error; allowed anywhere (also: {DEBUG_ENV}=1)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; return its exit status (see `EPILOG`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    parser = build_parser()
    args, passed_on = parser.parse_known_args([item for item in argv if item != DEBUG_FLAG])
    if passed_on and not getattr(args, "passes_arguments_on", False):
        parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
    args.passed_on = passed_on  # `retinascan train` parses its own flags (HfArgumentParser) when it runs
    _show_library_logs()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"retinascan {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug:
            raise
        print(f"retinascan {args.command}: error: {describe(error)}", file=sys.stderr)
        return EXIT_ERROR


def describe(error: BaseException) -> str:
    """The error as one line: its message (whitespace collapsed), plus what to do for the Hub's errors, whose
    messages say what failed but not how to fix it."""
    message = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, (ValueError, OSError, RuntimeError)):  # others (KeyError...) need their name
        message = f"{type(error).__name__}: {message}"
    hub_errors = sys.modules.get("huggingface_hub.errors")
    if hub_errors is not None and isinstance(
        error, (hub_errors.HfHubHTTPError, hub_errors.OfflineModeIsEnabled, hub_errors.HFValidationError)
    ):
        message += (
            " Check the repo id and revision, your network and login (`hf auth login`); with HF_HUB_OFFLINE=1 only "
            "models already in the cache can be used."
        )
    return f"{message} (--debug shows the traceback)"


def _show_library_logs() -> None:
    """The library logs what a user of the command should see (a resumed checkpoint, a fallback, a written
    folder) at INFO and above: print this package's records on stderr (once per process; other loggers and
    the propagation to the root logger are left alone)."""
    logger = logging.getLogger(__package__)
    if not any(isinstance(handler, _CommandLogHandler) for handler in logger.handlers):
        logger.addHandler(_CommandLogHandler())
        logger.setLevel(logging.INFO)


class _CommandLogHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record arrives (a caller, or pytest, may have replaced it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; the property always answers sys.stderr
        pass


if __name__ == "__main__":
    sys.exit(main())
