"""The README's worked example: `retinascan quickstart`, `retinascan evaluate` on its model, then
`retinascan release --dry-run`.

Runs the commands exactly as the README shows them (in a scratch folder, relative paths, so the report names
the folders a user's run creates), times the quickstart and records its peak memory, copies the evaluation
report and plots to `docs/evaluation/`, writes `quickstart.json` there (the figures the README quotes), keeps the
release's rendered model card and dry-run listing as the examples in `model_card/`, and regenerates the README's
two blocks from those files. A random tiny backbone on synthetic images: the numbers
show that the workflow runs and what it reports, not how well a pretrained model grades.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from retinascan_hf.cli import main as retinascan

from .machine import machine_info
from .readme_blocks import replace_block, wrap

SOURCE = "scripts/evaluation_example.py"
QUICKSTART_BLOCK = "quickstart-result"
EVALUATION_BLOCK = "evaluation-example"
REPORT_FILES = ("report.md", "report.json", "confusion_matrix.png", "reliability_diagram.png", "roc_referable.png")
SUMMARY_FILE = "quickstart.json"
RUN_DIR = "retinascan-quickstart"
EXAMPLE_REPO_ID = "retinascan/retinascan-quickstart"
CARD_EXAMPLE = "example_quickstart.md"
DRY_RUN_EXAMPLE = "example_quickstart_dry_run.txt"


def _peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def summarize(metrics: dict[str, Any], seconds: float, peak_rss_gib: float) -> dict[str, Any]:
    """What the README says about a quickstart run, from its `metrics.json`."""
    test = metrics["evaluation"]["test"]
    calibration = metrics["calibration"]
    return {
        "seed": metrics["config"]["seed"],
        "train_images": metrics["data"]["train"]["images"],
        "test_images": metrics["data"]["test"]["images"],
        "image_size": metrics["config"]["tiny_image_size"],
        "test_qwk": {mode: test[mode]["qwk"] for mode in ("knn", "ordinal", "prototype")},
        "majority": {key: metrics["majority_baseline_test"][key] for key in ("grade", "qwk", "accuracy")},
        "calibration": {
            key: calibration[key]
            for key in (
                "prototype_ece_before",
                "prototype_ece_after",
                "ordinal_qwk_before",
                "ordinal_qwk_after",
                "ordinal_nll_before",
                "ordinal_nll_after",
            )
        },
        "wall_seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_rss_gib, 2),
        "machine": machine_info(),
    }


def render_quickstart(summary: dict[str, Any]) -> str:
    """The README's quickstart paragraph (markers included)."""
    qwk, calibration, machine = summary["test_qwk"], summary["calibration"], summary["machine"]
    body = (
        f"**Quickstart result** (one run of `retinascan quickstart`, seed {summary['seed']}; "
        f"{summary['train_images']} *synthetic* training images, a *random* tiny CLIP at {summary['image_size']} px; "
        f"not a clinical result): test QWK kNN {qwk['knn']:.2f}, ordinal {qwk['ordinal']:.2f}, prototype "
        f"{qwk['prototype']:.2f} ({summary['test_images']} test images; always answering grade "
        f"{summary['majority']['grade']} scores QWK {summary['majority']['qwk']:.2f}, accuracy "
        f"{summary['majority']['accuracy']:.3f}). Calibration on validation moved the prototype ECE from "
        f"{calibration['prototype_ece_before']:.3f} to {calibration['prototype_ece_after']:.3f}, the ordinal QWK from "
        f"{calibration['ordinal_qwk_before']:.2f} to {calibration['ordinal_qwk_after']:.2f} (thresholds) and the "
        f"ordinal negative log-likelihood from {calibration['ordinal_nll_before']:.2f} to "
        f"{calibration['ordinal_nll_after']:.2f} (temperature). The whole command took {summary['wall_seconds']:.1f} s "
        f"wall time and {summary['peak_rss_gib']:.2f} GiB peak memory on {machine['logical_cpus']} CPU cores "
        f"(load average {machine['load_average_1min']}; `{SOURCE}`, `docs/evaluation/{SUMMARY_FILE}`)."
    )
    return wrap(QUICKSTART_BLOCK, SOURCE, body)


def render_evaluation_excerpt(report_md: str) -> str:
    """The README's excerpt of `report.md` (markers included): its summary lines, the table of every mode and the
    conformal grade-set table, without the per-source sections that follow."""
    sections = report_md.split("\n## ")
    overview = sections[0].split("\n", 1)[1]  # drop the report's own title
    overview = overview.split("\n- `")[0]  # the table, without the list explaining each mode
    conformal = next(section for section in sections if section.startswith("Conformal grade sets"))
    title, _, body = conformal.partition("\n")
    table = "\n".join(line for line in body.splitlines() if line.startswith("|"))
    return wrap(EVALUATION_BLOCK, SOURCE, f"{overview.strip()}\n\n**{title.strip()}**\n\n{table}")


def update_readme(readme: str | Path, docs: str | Path) -> bool:
    """Regenerate both README blocks from the files in `docs`; return whether the README changed."""
    docs = Path(docs)
    summary = json.loads((docs / SUMMARY_FILE).read_text(encoding="utf-8"))
    report = (docs / "report.md").read_text(encoding="utf-8")
    changed = replace_block(readme, QUICKSTART_BLOCK, render_quickstart(summary))
    return replace_block(readme, EVALUATION_BLOCK, render_evaluation_excerpt(report)) or changed


def _release_dry_run(run: Path) -> str:
    """`retinascan release --dry-run` of the quickstart model with its evaluation report; what it printed."""
    command = ["release", "--model", str(run / "model"), "--repo-id", EXAMPLE_REPO_ID, "--dry-run"]
    command += ["--staging-dir", str(run / "release"), "--evaluation-report", str(run / "evaluation" / "report.json")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        retinascan(command)
    return f"$ retinascan {' '.join(command)}\n{printed.getvalue()}"


def run_example(docs: str | Path, card_examples: str | Path) -> dict[str, Any]:
    """Run quickstart, evaluate and a release dry run in a scratch folder; write the report files and
    `quickstart.json` to `docs`, the rendered card and the dry run's listing to `card_examples`."""
    docs, card_examples = Path(docs).absolute(), Path(card_examples).absolute()
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        try:
            started = time.perf_counter()
            retinascan(["quickstart", "--output-dir", RUN_DIR, "--no-progress"])
            seconds, peak = time.perf_counter() - started, _peak_rss_gib()
            run = Path(RUN_DIR)
            evaluate = ["evaluate", "--model", str(run / "model"), "--data", str(run / "corpus")]
            retinascan([*evaluate, "--output-dir", str(run / "evaluation"), "--cache-dir", str(run / "feature-cache")])
            dry_run = _release_dry_run(run)
            metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
            docs.mkdir(parents=True, exist_ok=True)
            for name in REPORT_FILES:
                shutil.copyfile(run / "evaluation" / name, docs / name)
            shutil.copyfile(run / "release" / "README.md", card_examples / CARD_EXAMPLE)
            (card_examples / DRY_RUN_EXAMPLE).write_text(dry_run, encoding="utf-8")
        finally:
            os.chdir(here)
    summary = summarize(metrics, seconds, peak)
    (docs / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


__all__ = ["render_evaluation_excerpt", "render_quickstart", "run_example", "summarize", "update_readme"]
