"""The tiny random backbone trained on the real eyepacs-256 photos: shared by the scripts that measure it."""

from __future__ import annotations

from pathlib import Path

from retinascan_hf.corpus import build_corpus
from retinascan_hf.training import TrainingResult, run_training
from retinascan_hf.training.config import TrainingConfig


def train_tiny_on_eyepacs(data: Path, work: Path, image_size: int = 128) -> TrainingResult:
    """Build the corpus of `data` (EyePACS layout) into `work/corpus`, train the offline tiny CLIP with the
    reference configuration into `work/run`, and return the result (model folder, metrics)."""
    build_corpus({"eyepacs": data}, work / "corpus", num_proc=2, progress=False)
    config = TrainingConfig(
        data=str(work / "corpus"),
        output_dir=str(work / "run"),
        cache_dir=str(work / "cache"),
        backbone="tiny",
        tiny_image_size=image_size,
        cpu=True,
        progress=False,
    )
    return run_training(config)


__all__ = ["train_tiny_on_eyepacs"]
