"""report.json -> report.md: one table with a row per mode (95% intervals in brackets), then grade sets, the
per-source breakdown, the leave-one-source-out table and the plots. Rendering only: every number comes from
the report dict, so the Markdown can never disagree with the JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MISSING = "–"


def number(value: float | None, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def with_interval(value: float | None, interval: Sequence[float] | None) -> str:
    """`0.812 [0.760, 0.858]`; the bracket is left out where no interval exists."""
    if value is None or interval is None:
        return number(value)
    return f"{number(value)} [{number(interval[0])}, {number(interval[1])}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


SCREENING_COLUMNS = (
    ("referable", "sensitivity", "ref. sens."),
    ("referable", "specificity", "ref. spec."),
    ("referable", "ppv", "ref. PPV"),
    ("referable", "npv", "ref. NPV"),
    ("referable", "auroc", "ref. AUROC"),
    ("vision_threatening", "sensitivity", "VTDR sens."),
    ("vision_threatening", "specificity", "VTDR spec."),
    ("vision_threatening", "auroc", "VTDR AUROC"),
)


def _mode_row(mode: str, metrics: dict[str, Any]) -> list[str]:
    intervals = metrics.get("confidence_intervals") or {}
    recalls = " / ".join(number(row["recall"], 2) for row in metrics["per_grade"])
    sets = metrics.get("grade_sets")
    set_cell = MISSING if sets is None else f"{number(sets['coverage'])} / {number(sets['mean_size'], 2)}"
    return [
        mode,
        with_interval(metrics["qwk"], intervals.get("qwk")),
        with_interval(metrics["accuracy"], intervals.get("accuracy")),
        number(metrics["mae"]),
        number(metrics["off_by_one_accuracy"]),
        number(metrics["f1_macro"]),
        number(metrics["f1_weighted"]),
        *(
            with_interval(metrics[group][statistic], (intervals.get(group) or {}).get(statistic))
            for group, statistic, _ in SCREENING_COLUMNS
        ),
        number(metrics["ece"]),
        number(metrics["brier"]),
        recalls,
        set_cell,
    ]


def main_table(report: dict[str, Any]) -> str:
    header = [
        "mode",
        "QWK",
        "accuracy",
        "MAE",
        "off-by-one acc.",
        "F1 macro",
        "F1 weighted",
        *(title for _, _, title in SCREENING_COLUMNS),
        "ECE",
        "Brier",
        "recall grade 0 / 1 / 2 / 3 / 4",
        "grade sets: coverage / size",
    ]
    return table(header, [_mode_row(mode, metrics) for mode, metrics in report["modes"].items()])


def grade_set_table(report: dict[str, Any]) -> str | None:
    rows = []
    for mode, metrics in report["modes"].items():
        sets = metrics.get("grade_sets")
        if sets is None:
            continue
        per_grade = [f"{number(row['coverage'], 2)} / {number(row['mean_size'], 2)}" for row in sets["per_grade"]]
        rows.append([mode, number(sets["coverage"]), number(sets["mean_size"], 2), *per_grade])
    if not rows:
        return None
    grades = [f"grade {row['grade']}: coverage / size" for row in next(iter(report["modes"].values()))["per_grade"]]
    return table(["mode", "coverage", "mean size", *grades], rows)


def per_source_table(report: dict[str, Any]) -> str:
    modes = list(report["modes"])
    rows = []
    for source, by_mode in report["per_source"].items():
        first = next(iter(by_mode.values()))
        cells = [f"{number(by_mode[mode]['qwk'])} / {number(by_mode[mode]['accuracy'])}" for mode in modes]
        rows.append([source, str(first["n"]), *cells])
    return table(["source", "images", *(f"{mode} QWK / acc." for mode in modes)], rows)


def loso_table(loso: dict[str, Any]) -> str:
    rows = []
    for mode, statistics in loso["modes"].items():
        cells = []
        for name in ("qwk", "accuracy", "referable_auroc"):
            in_domain, held_out = statistics[name]["in_domain"], statistics[name]["held_out"]
            gap = None if in_domain is None or held_out is None else held_out - in_domain
            cells.append(f"{number(in_domain)} / {number(held_out)} ({MISSING if gap is None else f'{gap:+.3f}'})")
        rows.append([mode, *cells])
    header = ["mode", "QWK in-domain / held-out (gap)", "accuracy", "referable AUROC"]
    return table(header, rows)


def render_report(report: dict[str, Any]) -> str:
    """The Markdown report of an evaluation."""
    first = next(iter(report["modes"].values()))
    intervals = first.get("confidence_intervals")
    cache = report["feature_cache"]
    per_grade = " / ".join(str(count) for count in report["images_per_grade"])
    lines = [
        f"# RetinaScan evaluation: `{report['split']}` split",
        "",
        f"Model `{report['model']}`, corpus `{report['data']}`: {report['images']} images (grades 0-4: {per_grade}). "
        f"Referable DR is grade >= {report['referable_grade']}, vision-threatening DR (VTDR) grade >= "
        f"{first['vision_threatening']['cut']}. Backbone features: {cache['computed']} computed, "
        f"{cache['reused']} read from the feature cache.",
    ]
    if intervals:
        lines.append(
            f"Brackets: {100 * intervals['confidence']:.0f}% percentile-bootstrap intervals, {intervals['resamples']} "
            f"resamples of {intervals['unit']}s (seed {intervals['seed']})."
        )
    lines += ["", main_table(report), ""]
    lines += [f"- `{mode}`: {description}" for mode, description in report["descriptions"].items()]
    sets = grade_set_table(report)
    if sets is not None:
        lines += [
            "",
            f"## Conformal grade sets (target coverage {100 * report['coverage']:.0f}%)",
            "",
            "Empirical coverage (share of images whose set holds the true grade) and mean set size, overall and "
            "per true grade.",
            "",
            sets,
        ]
    lines += ["", "## Per source", "", per_source_table(report)]
    loso = report.get("leave_one_source_out")
    if loso is not None and "skipped" in loso:
        lines += ["", f"## Leave-one-source-out: held out `{loso['held_out_source']}`", "", loso["skipped"]]
    elif loso is not None:
        lines += [
            "",
            f"## Leave-one-source-out: held out `{loso['held_out_source']}`",
            "",
            f"In-domain: the validation split ({loso['in_domain_images']} images of "
            f"{', '.join(loso['in_domain_sources'])}); held-out: this test split.",
            "",
            loso_table(loso),
        ]
    pictures = {name: path for name, path in report["files"].items() if path}
    if pictures:
        lines += ["", "## Plots", ""]
        lines += [f"![{name.replace('_', ' ')}]({path})" for name, path in pictures.items()]
    elif report["files"]:
        lines += ["", "Plots skipped: matplotlib is not installed (`pip install 'retinascan-hf[plots]'`)."]
    return "\n".join(lines) + "\n"


__all__ = ["render_report"]
