"""Shared fixtures: a tiny offline CLIP-based RetinaScan, synthetic fundus images, saved model folders.

Nothing here touches the network: HF_HUB_OFFLINE is set before transformers is imported, and every
model is built from a local config with random weights.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

from retinascan_hf import FeatureBank, RetinaScanModel
from retinascan_hf.synthetic import synthetic_fundus_set
from retinascan_hf.tiny_clip import random_retinascan

GRADES = [0, 1, 2, 3, 4]


@pytest.fixture(scope="session")
def tiny_model_and_processor():
    """A tiny RetinaScan (32 px, 32-d) and its processor; treat as read-only."""
    return random_retinascan(seed=0)


@pytest.fixture(scope="session")
def fundus_images():
    """Ten synthetic fundus images, two per grade, 96 px."""
    return synthetic_fundus_set(GRADES * 2, size=96, seed=1)


@pytest.fixture(scope="session")
def bank_for(tiny_model_and_processor, fundus_images):
    """A feature bank holding the tiny model's embeddings of `fundus_images` with their true grades."""
    model, processor = tiny_model_and_processor
    with torch.no_grad():
        embeddings = model(**processor(fundus_images)).embeddings
    return FeatureBank(
        embeddings,
        GRADES * 2,
        image_ids=[f"synthetic/{i}" for i in range(len(fundus_images))],
        sources=["synthetic"] * len(fundus_images),
        config_hash=model.config.embedding_hash(),
    )


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_model_and_processor, bank_for) -> Path:
    """A complete model folder: weights + config + code, processor and feature bank."""
    model, processor = tiny_model_and_processor
    directory = tmp_path_factory.mktemp("model")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    bank_for.save_pretrained(directory)
    return directory


@pytest.fixture
def count_backbone_forwards(monkeypatch):
    """Counts images pushed through `RetinaScanModel.forward_features` (in any instance)."""
    seen = []
    original = RetinaScanModel.forward_features

    def counting(self, pixel_values):
        seen.append(len(pixel_values))
        return original(self, pixel_values)

    monkeypatch.setattr(RetinaScanModel, "forward_features", counting)
    return seen


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """`$RETINASCAN_REAL_DATA` (the shared folder of real fundus photos), or skip saying why.

    CI also sets `RETINASCAN_REQUIRE_REAL_DATA=1`: there a missing folder is a failure, not a silent skip.
    """
    value = os.environ.get("RETINASCAN_REAL_DATA", "")
    path = Path(value)
    if value and (path / "eyepacs-256" / "trainLabels.csv").is_file():
        return path
    reason = (
        f"RETINASCAN_REAL_DATA={value} does not hold eyepacs-256/trainLabels.csv"
        if value
        else "RETINASCAN_REAL_DATA is not set: real fundus photos are unavailable (CI sets it)"
    )
    if os.environ.get("RETINASCAN_REQUIRE_REAL_DATA") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
