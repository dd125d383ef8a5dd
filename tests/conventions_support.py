"""Builders shared by the conventions tests: what a `transformers.Trainer` user passes, at toy size."""

from __future__ import annotations

from pathlib import Path

import datasets
from transformers import TrainingArguments

GRADES = [0, 1, 2, 3, 4] * 2  # the grades of the `fundus_images` fixture


def pixel_dataset(processor, images) -> datasets.Dataset:
    """`pixel_values` and `labels` columns, as a user would prepare fundus images for `Trainer`."""
    pixel_values = processor(images)["pixel_values"]
    return datasets.Dataset.from_dict({"pixel_values": pixel_values.tolist(), "labels": GRADES}).with_format("torch")


def cpu_arguments(output_dir: Path, **overrides) -> TrainingArguments:
    """`TrainingArguments` on the CPU with no reporting, checkpoints or progress bars."""
    defaults = {"use_cpu": True, "report_to": [], "save_strategy": "no", "disable_tqdm": True}
    return TrainingArguments(output_dir=str(output_dir), **{**defaults, **overrides})
