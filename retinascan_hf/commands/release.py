"""`retinascan release --model DIR --repo-id ORG/NAME [--dry-run]`: stage, verify, upload (one commit)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "release",
        help="Stage, verify (fresh process, offline, every mode) and upload a model folder to the Hub.",
        description="Stage a complete release of a model folder (weights, config, remote code, processor, feature "
        "bank, ONNX export if any, model card), verify that it loads with trust_remote_code from a Hub-cache layout "
        "in a fresh offline process and grades like the source in every mode, then upload it in one commit. "
        "Nothing is uploaded if verification fails.",
    )
    parser.add_argument("--model", required=True, help="Model folder (e.g. a training run's model/).")
    parser.add_argument("--repo-id", required=True, help="Hub repository, ORG/NAME.")
    parser.add_argument("--dry-run", action="store_true", help="Stop after verification; print the files and sizes.")
    parser.add_argument("--revision", help="Branch to commit to (created if missing); default main.")
    parser.add_argument("--tag", help="Tag the release commit.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="Storage dtype of the weights (float16 halves the download; loading still computes in float32).",
    )
    parser.add_argument(
        "--keep-text-tower",
        action="store_true",
        help="Keep CLIP's text tower (dropped by default: grading never runs it; keep it to recompute prototypes).",
    )
    parser.add_argument("--staging-dir", help="Keep the staged release in this new or empty folder.")
    parser.add_argument("--evaluation-report", help="report.json of `retinascan evaluate`, for the card.")
    parser.add_argument("--build-report", help="Corpus build_report.json (default: the one training used).")
    parser.add_argument("--base-model", help="Hub id of the CLIP checkpoint (default: training's --backbone).")
    parser.add_argument("--dataset", action="append", default=[], help="Hub dataset id for the card (repeatable).")
    parser.add_argument("--license", help="License id for the card (default apache-2.0).")
    parser.add_argument("--token", help="Hub token (default: the logged-in token).")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..release import discover_facts, release_model

    facts = discover_facts(
        Path(args.model),
        args.repo_id,
        evaluation_report=args.evaluation_report,
        build_report=args.build_report,
        base_model=args.base_model,
        datasets=args.dataset,
        license=args.license,
    )
    result = release_model(
        args.model,
        args.repo_id,
        dry_run=args.dry_run,
        storage_dtype=args.dtype,
        keep_text_tower=args.keep_text_tower,
        revision=args.revision,
        tag=args.tag,
        private=args.private or None,
        token=args.token,
        staging_dir=args.staging_dir,
        facts=facts,
    )
    width = max(len(staged.name) for staged in result.files)
    for staged in result.files:
        print(f"{staged.name:<{width}}  {staged.size / 2**20:>9.2f} MiB")
    total = sum(staged.size for staged in result.files)
    print(f"{'total':<{width}}  {total / 2**20:>9.2f} MiB")
    modes = ", ".join(result.verification.modes)
    print(f"Verified: loads with trust_remote_code offline and grades like the source in {modes}.")
    if result.commit is None:
        print("Dry run: nothing uploaded.")
    else:
        print(f"Uploaded {args.repo_id}: {result.commit.commit_url}")
    return 0
