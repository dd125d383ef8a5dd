"""A CSV tracker for Accelerate: metrics readable with nothing but a spreadsheet (or `csv`).

Rows are long-format `step,name,value`, so metrics that appear only at some steps (validation each epoch,
loss each logging step) need no fixed header, and appending after a resume never rewrites the file.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process

CSV_NAME = "metrics.csv"
HPARAMS_NAME = "hparams.json"


class CSVTracker(GeneralTracker):
    """Appends every `accelerator.log(values, step)` to `<logging_dir>/<run_name>/metrics.csv`."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        # Built before the Accelerator (it is passed in `log_with`), so no process-state query and no file
        # access here: the decorated methods below run on the main process only.
        super().__init__()
        self.directory = Path(logging_dir) / run_name
        self.path = self.directory / CSV_NAME

    @property
    def tracker(self) -> Path:
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / HPARAMS_NAME).write_text(json.dumps(values, indent=2, default=str))

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["step", "name", "value"])
            writer.writerows([step, name, value] for name, value in values.items())


def read_csv_metrics(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """`{name: [(step, value), ...]}` from a tracker file, for reports and tests."""
    series: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            series.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return series


__all__ = ["CSV_NAME", "CSVTracker", "read_csv_metrics"]
