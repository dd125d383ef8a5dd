"""Pictures of the metrics: confusion matrices, reliability diagrams, ROC curves (matplotlib, Agg backend).

matplotlib is an optional dependency (`pip install "retinascan-hf[plots]"`): without it every function
returns `None` and logs why, so numbers are never lost for want of a picture. Files are written to a
temporary name and renamed, so a crash never leaves a truncated PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import logging

from .grading import ReliabilityBins, roc_curve

logger = logging.get_logger(__name__)


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'retinascan-hf[plots]').")
        return None
    return pyplot


def _save(figure: Any, pyplot: Any, path: Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.tight_layout()
    figure.savefig(temporary, dpi=100)
    pyplot.close(figure)
    os.replace(temporary, path)
    return str(path)


def _panels(pyplot: Any, count: int, size: float) -> tuple[Any, list[Any]]:
    """A figure with `count` square panels, three per row (unused grid cells hidden)."""
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(size * columns, size * rows), squeeze=False)
    panels = list(axes.flat)
    for unused in panels[count:]:
        unused.axis("off")
    return figure, panels[:count]


def save_confusion_matrices(matrices: Mapping[str, np.ndarray], path: Path) -> str | None:
    """One labelled panel (`[true, predicted]` counts) per entry of `matrices` (title -> matrix)."""
    pyplot = _pyplot()
    if pyplot is None:
        return None
    figure, panels = _panels(pyplot, len(matrices), 4.0)
    for panel, (title, matrix) in zip(panels, matrices.items(), strict=True):
        matrix = np.asarray(matrix)
        panel.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            panel.text(column, row, str(count), ha="center", va="center", color=colour)
        grades = range(matrix.shape[0])
        panel.set(xticks=grades, yticks=grades, xlabel="predicted grade", ylabel="true grade", title=title)
    return _save(figure, pyplot, path)


def save_confusion_matrix(matrix: np.ndarray, path: Path, title: str) -> str | None:
    """A single labelled confusion matrix."""
    return save_confusion_matrices({title: matrix}, path)


def save_reliability_diagram(panels: Mapping[str, Mapping[str, ReliabilityBins]], path: Path) -> str | None:
    """One panel per model part (e.g. `"ordinal head"`), each with a curve per variant (e.g. `"before
    calibration"`, `"after calibration"`): accuracy against confidence per bin, the diagonal being perfect."""
    pyplot = _pyplot()
    if pyplot is None:
        return None
    figure, axes = _panels(pyplot, len(panels), 4.2)
    for panel, (title, curves) in zip(axes, panels.items(), strict=True):
        panel.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        for label, bins in curves.items():
            filled = bins.counts > 0
            ece = bins.expected_calibration_error
            panel.plot(bins.confidence[filled], bins.accuracy[filled], marker="o", label=f"{label} (ECE {ece:.3f})")
        panel.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy", title=title)
        panel.legend(loc="upper left", fontsize="small")
    return _save(figure, pyplot, path)


@dataclass
class RocInput:
    """One ROC curve: truth (`positive` `[N]` bools), ranking `scores` `[N]`, and the decided operating point
    (`sensitivity`, `specificity`), drawn as a marker when defined."""

    positive: np.ndarray
    scores: np.ndarray
    auroc: float | None
    sensitivity: float | None = None
    specificity: float | None = None


def save_roc_curves(curves: Mapping[str, RocInput], path: Path, title: str) -> str | None:
    """ROC curves of several decision modes on one set of axes, AUROC in the legend."""
    pyplot = _pyplot()
    if pyplot is None:
        return None
    figure, panel = pyplot.subplots(figsize=(5.2, 5))
    panel.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    for label, curve in curves.items():
        if curve.auroc is None:
            continue  # one class only: no curve exists
        false_positive_rate, true_positive_rate = roc_curve(curve.positive, curve.scores)
        (line,) = panel.plot(
            false_positive_rate, true_positive_rate, label=f"{label} (AUROC {curve.auroc:.3f})", drawstyle="default"
        )
        if curve.sensitivity is not None and curve.specificity is not None:
            panel.plot(1 - curve.specificity, curve.sensitivity, marker="o", color=line.get_color())
    panel.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    panel.legend(loc="lower right", fontsize="small")
    return _save(figure, pyplot, path)


__all__ = [
    "RocInput",
    "save_confusion_matrices",
    "save_confusion_matrix",
    "save_reliability_diagram",
    "save_roc_curves",
]
