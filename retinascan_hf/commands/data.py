"""``retinascan data build``: argument parsing only; the work is :func:`build_corpus`.

Library modules (datasets, huggingface_hub) are imported when the command runs, so registering
the command keeps ``retinascan --help`` fast. Errors (a bad source, an existing output) end the command
with one line on stderr and exit status 2 (``retinascan_hf.cli``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..corpus.adapters import KINDS


class _CollectSources(argparse.Action):
    """Gather repeated ``--source KIND=PATH`` into ``{kind: Path}``, rejecting bad or repeated kinds."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        kind, separator, path = str(values).partition("=")
        sources = dict(getattr(namespace, self.dest) or {})
        if not separator or not path:
            parser.error(f"{option_string} expects KIND=PATH, got {values!r}")
        if kind not in KINDS:
            parser.error(f"unknown source kind {kind!r}; known: {', '.join(KINDS)}")
        if kind in sources:
            parser.error(f"source kind {kind!r} given twice")
        sources[kind] = Path(path)
        setattr(namespace, self.dest, sources)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data build`` to the top-level ``retinascan`` parser."""
    data = subparsers.add_parser("data", help="Build the merged DR corpus from published data sets.")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="Merge, screen and split data sets into a DatasetDict on disk.",
        description="Read each data set in its published layout, exclude bad rows (counted in "
        "build_report.json), split by patient and save with DatasetDict.save_to_disk.",
    )
    build.add_argument(
        "--source",
        dest="sources",
        action=_CollectSources,
        required=True,
        metavar="KIND=PATH",
        help=f"a data set to include, repeatable; KIND is one of {', '.join(KINDS)} "
        "(PATH is the CSV file itself for csv)",
    )
    build.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    build.add_argument(
        "--protocol",
        default="merged",
        help="merged (default), loso:<source> (test on one held-out source), or gdrbench[:<source>] "
        "(GDRBench split files)",
    )
    build.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    build.add_argument("--val-ratio", type=float, default=0.1, help="validation fraction (default 0.1)")
    build.add_argument("--test-ratio", type=float, default=0.1, help="test fraction, merged protocol (default 0.1)")
    build.add_argument("--num-proc", type=int, default=1, help="processes that check and hash images")
    build.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the corpus and its card to the Hub")
    build.add_argument("--public", action="store_true", help="make the Hub dataset public (default private)")
    build.add_argument("--no-progress", dest="progress", action="store_false", help="hide every progress bar")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    """Build (and optionally push) the corpus, print its tables."""
    from ..corpus.build import build_corpus
    from ..corpus.report import REPORT_FILE, format_table
    from ..progress import progress_bars

    with progress_bars(args.progress):
        report = build_corpus(
            args.sources,
            args.out,
            protocol=args.protocol,
            seed=args.seed,
            val_ratio=args.val_ratio,
            test_ratio=args.test_ratio,
            num_proc=args.num_proc,
            progress=args.progress,
        )
    print(format_table(report.source_table()), end="\n\n")
    print(format_table(report.split_table()), end="\n\n")
    print(f"Saved {report.num_kept} images to {args.out} (report: {args.out / REPORT_FILE})")
    if args.push_to_hub:
        from ..corpus.hub import push_corpus

        with progress_bars(args.progress):
            push_corpus(args.out, report, args.push_to_hub, private=not args.public)
        print(f"Pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0
