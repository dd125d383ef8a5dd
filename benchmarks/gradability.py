"""How often the pipeline's gradability checks flag what must not be graded, and what they cost real photos.

Rates are counted on `pipeline("retinascan")` results (`gradable`, `error_type`), for two models, both a
random tiny CLIP with trained heads, trained here in a temporary folder:

- the quickstart model (`retinascan quickstart`: synthetic fundus images, 64 px). Non-fundus pictures
  (`synthetic.render_non_fundus`) flagged, per kind and per check; its own synthetic test split flagged
  (the in-distribution price). Real photos graded by it are flagged too, as they should be: it has never
  seen a real photograph, so its embedding check calls them out of distribution. That rate is recorded, but
  the honest false-positive rates for real photos are the next two.
- the image-quality check alone (processor only, no model) on every real photo: what any model pays.
- an EyePACS model (the 2,709 real eyepacs-256 photos, split by patient, 128 px): both checks on its test
  split (patients it never saw), on the 10 camera originals, and on the non-fundus pictures.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from retinascan_hf import RetinaScanImageProcessor, load_pipeline
from retinascan_hf.synthetic import HARD_NON_FUNDUS_KINDS, NON_FUNDUS_KINDS, non_fundus_set
from retinascan_hf.training.quickstart import quickstart

from .eyepacs import train_tiny_on_eyepacs
from .readme_blocks import wrap
from .timing import machine_summary


def flag_rate(flags: Sequence[str | None]) -> dict[str, Any]:
    """`flags` holds, per image, the `error_type` that stopped its grading or `None` when it was graded."""
    flagged = [flag for flag in flags if flag is not None]
    return {
        "flagged": len(flagged),
        "total": len(flags),
        "rate": len(flagged) / len(flags) if flags else None,
        "by_check": dict(Counter(flagged).most_common()),
    }


def pipeline_flags(grader, inputs: Sequence[Any], batch_size: int = 16) -> list[str | None]:
    return flags_of(grader(list(inputs), batch_size=batch_size))


def flags_of(results: Sequence[dict[str, Any]]) -> list[str | None]:
    return [None if result["gradable"] else result["error_type"] for result in results]


def threshold_conflict(
    real_photos: Sequence[dict[str, Any]], non_fundus: Sequence[dict[str, Any]], keep: float = 0.95
) -> dict[str, Any] | None:
    """What it would take to grade `keep` of the real photos with this model: the OOD threshold at that quantile
    of their scores, and the share of the non-fundus pictures that would then be graded too (those that pass
    the quality check and score below it). Photos and pictures the quality check stops have no score; `None`
    when no real photo has one, or there are no non-fundus pictures."""

    def scores(results: Sequence[dict[str, Any]]) -> np.ndarray:
        values = np.array([result["ood_score"] for result in results], dtype=float)
        return values[np.isfinite(values)]

    real, other = scores(real_photos), scores(non_fundus)
    if not len(real) or not non_fundus:  # nothing reached the model: no threshold to speak of
        return None
    threshold = float(np.quantile(real, keep))
    quantiles = (0.05, 0.25, 0.5, 0.75, 0.95)

    def spread(values: np.ndarray) -> dict[str, float] | None:
        return {str(q): round(float(np.quantile(values, q)), 2) for q in quantiles} if len(values) else None

    return {
        "real_photo_scores": spread(real),
        "non_fundus_scores": spread(other),
        "threshold_grading": keep,
        "threshold": round(threshold, 3),
        "non_fundus_graded_at_that_threshold": float((other <= threshold).sum() / len(non_fundus)),
    }


def quality_flags(processor: RetinaScanImageProcessor, paths: Sequence[Path]) -> tuple[list[str | None], Counter]:
    """The image-quality check alone: `"LowQuality"` (or the input error) per photo, and the problems named."""
    flags, problems = [], Counter()
    for path in paths:
        try:
            found = processor.prepare(path).problems
        except ValueError as error:
            flags.append(type(error).__name__)
            continue
        problems.update(problem.split(" (")[0] for problem in found)
        flags.append("LowQuality" if found else None)
    return flags, problems


def non_fundus_results(grader, per_kind: int, seed: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The kind of each non-fundus picture (the issue's kinds, then the harder disc-shaped ones) and its result."""
    pictures = non_fundus_set(per_kind, NON_FUNDUS_KINDS + HARD_NON_FUNDUS_KINDS, seed=seed)
    return [kind for kind, _ in pictures], grader([image for _, image in pictures], batch_size=16)


def non_fundus_rates(kinds: Sequence[str], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flag rates over the issue's non-fundus kinds, over the harder disc-shaped kinds, and per kind."""
    by_kind: dict[str, list[str | None]] = {}
    for kind, flag in zip(kinds, flags_of(results), strict=True):
        by_kind.setdefault(kind, []).append(flag)
    return {
        "listed_kinds": flag_rate([flag for kind in NON_FUNDUS_KINDS for flag in by_kind[kind]]),
        "disc_shaped_kinds": flag_rate([flag for kind in HARD_NON_FUNDUS_KINDS for flag in by_kind[kind]]),
        "per_kind": {kind: flag_rate(values) for kind, values in by_kind.items()},
    }


def run_gradability_benchmark(
    real_data: Path, per_kind: int = 40, seed: int = 0, log: Callable[[str], None] = print
) -> dict[str, Any]:
    eyepacs = sorted((real_data / "eyepacs-256" / "train").glob("*.jpeg"))
    originals = sorted((real_data / "eyepacs-originals" / "train").glob("*.jpeg"))
    seconds: dict[str, float] = {}
    summary: dict[str, Any] = {"machine": machine_summary(), "per_kind": per_kind, "seed": seed}
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        trained = quickstart(Path(work) / "quickstart", seed=seed, progress=False, log=lambda _: None)
        grader = load_pipeline(trained.model_dir)
        test = datasets.load_from_disk(str(trained.corpus_dir))["test"]
        kinds, pictures = non_fundus_results(grader, per_kind, seed)
        real_photos = grader([str(path) for path in eyepacs + originals], batch_size=16)
        summary["quickstart"] = {
            "ood_threshold": grader.model.config.ood_threshold,
            "non_fundus": non_fundus_rates(kinds, pictures),
            "synthetic_test_split": flag_rate(pipeline_flags(grader, list(test["image"]))),
            "real_photos_all_checks": flag_rate(flags_of(real_photos)),
            # Why the quickstart model cannot both grade real photos and refuse non-fundus pictures.
            "threshold_conflict": threshold_conflict(real_photos, pictures),
        }
        seconds["quickstart"] = time.perf_counter() - started
        log(f"quickstart model done in {seconds['quickstart']:.0f} s")

        started = time.perf_counter()
        processor = RetinaScanImageProcessor()
        eyepacs_flags, eyepacs_problems = quality_flags(processor, eyepacs)
        original_flags, original_problems = quality_flags(processor, originals)
        summary["quality_check_only"] = {
            "eyepacs_256": flag_rate(eyepacs_flags),
            "eyepacs_originals": flag_rate(original_flags),
            "problems": dict((eyepacs_problems + original_problems).most_common()),
        }
        seconds["quality_check_only"] = time.perf_counter() - started
        log(f"quality check on {len(eyepacs) + len(originals)} real photos done")

        started = time.perf_counter()
        result = train_tiny_on_eyepacs(real_data / "eyepacs-256", Path(work) / "eyepacs", image_size=128)
        grader = load_pipeline(result.model_dir)
        corpus_test = datasets.load_from_disk(str(Path(work) / "eyepacs" / "corpus"))["test"]
        summary["eyepacs_model"] = {
            "ood_threshold": grader.model.config.ood_threshold,
            "ood_calibration": result.metrics["ood"],
            "test_split": flag_rate(pipeline_flags(grader, list(corpus_test["image"]))),
            "eyepacs_originals": flag_rate(pipeline_flags(grader, [str(p) for p in originals])),
            "non_fundus": non_fundus_rates(*non_fundus_results(grader, per_kind, seed)),
        }
        seconds["eyepacs_model"] = time.perf_counter() - started
    summary["seconds"] = seconds
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A table of flag rates: what should be flagged (non-fundus) next to what should not (real fundus)."""

    def row(name: str, rate: dict[str, Any]) -> str:
        checks = ", ".join(f"{check} {count}" for check, count in rate["by_check"].items())
        return f"  {name:<44} {rate['flagged']:>5}/{rate['total']:<5} {100 * rate['rate']:6.1f}%  {checks}"

    quick, quality, real = summary["quickstart"], summary["quality_check_only"], summary["eyepacs_model"]
    lines = ["should be flagged (non-fundus pictures):"]
    for label, model in (("quickstart model", quick), ("EyePACS model", real)):
        lines.append(row(f"{label}, listed kinds", model["non_fundus"]["listed_kinds"]))
        lines.append(row(f"{label}, disc-shaped kinds", model["non_fundus"]["disc_shaped_kinds"]))
    lines.append("should be graded (fundus photographs):")
    lines.append(row("quickstart model, its synthetic test split", quick["synthetic_test_split"]))
    lines.append(row("quality check only, eyepacs-256", quality["eyepacs_256"]))
    lines.append(row("quality check only, camera originals", quality["eyepacs_originals"]))
    lines.append(row("EyePACS model, its test split", real["test_split"]))
    lines.append(row("EyePACS model, camera originals", real["eyepacs_originals"]))
    lines.append("not meaningful (a synthetic-only model on real photos):")
    lines.append(row("quickstart model, all real photos", quick["real_photos_all_checks"]))
    conflict = quick.get("threshold_conflict")
    if conflict:
        lines.append(
            f"  an OOD threshold grading {conflict['threshold_grading']:.0%} of them ({conflict['threshold']:.1f}, "
            f"not {quick['ood_threshold']:.2f}) would grade {conflict['non_fundus_graded_at_that_threshold']:.1%} "
            "of the non-fundus pictures"
        )
    lines.append("per non-fundus kind (quickstart model | EyePACS model):")
    for kind, rate in quick["non_fundus"]["per_kind"].items():
        other = real["non_fundus"]["per_kind"][kind]
        lines.append(f"  {kind:<24} {100 * rate['rate']:6.1f}% | {100 * other['rate']:6.1f}%")
    return "\n".join(lines)


README_BLOCK = "gradability-table"
README_SOURCE = "scripts/benchmark_gradability.py from benchmarks/gradability.json"


def render_readme_table(summary: dict[str, Any]) -> str:
    """The README's table of flag rates (markers included), from `gradability.json`."""

    def cell(rate: dict[str, Any]) -> str:
        return f"{rate['flagged']:,} / {rate['total']:,} ({100 * rate['rate']:.1f}%)"

    quick, quality, real = summary["quickstart"], summary["quality_check_only"], summary["eyepacs_model"]
    listed, disc = NON_FUNDUS_KINDS, HARD_NON_FUNDUS_KINDS
    per_kind = summary["per_kind"]
    rows = [
        (
            f"non-fundus, {len(listed)} kinds ({', '.join(kind.replace('_', ' ') for kind in listed)}; "
            f"{per_kind} each)",
            "quickstart",
            quick["non_fundus"]["listed_kinds"],
            "all",
        ),
        (
            f"non-fundus, {len(disc)} disc-shaped kinds ({', '.join(kind.replace('_', ' ') for kind in disc)})",
            "quickstart",
            quick["non_fundus"]["disc_shaped_kinds"],
            "all",
        ),
        ("same non-fundus kinds", "EyePACS", real["non_fundus"]["listed_kinds"], "all"),
        ("same disc-shaped kinds", "EyePACS", real["non_fundus"]["disc_shaped_kinds"], "all"),
        ("synthetic fundus, quickstart's test split", "quickstart", quick["synthetic_test_split"], "few"),
        ("real photos, eyepacs-256 (all)", "quality check only", quality["eyepacs_256"], "few"),
        ("real photos, camera originals", "quality check only", quality["eyepacs_originals"], "few"),
        ("real photos, eyepacs-256 test split (unseen patients)", "EyePACS", real["test_split"], "few"),
        ("real photos, camera originals", "EyePACS", real["eyepacs_originals"], "see below"),
    ]
    lines = ["| images | model | flagged | should be |", "|---|---|---:|---|"]
    lines += [f"| {images} | {model} | {cell(rate)} | {expected} |" for images, model, rate, expected in rows]
    return wrap(README_BLOCK, README_SOURCE, "\n".join(lines))


__all__ = ["flag_rate", "format_summary", "non_fundus_rates", "render_readme_table", "run_gradability_benchmark"]
