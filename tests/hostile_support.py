"""Builders for the hostile-input and hostile-artefact tests: a complete model folder and ways to tamper with it.

Plain functions, not fixtures: each test module decides the scope of the folder it builds and copies it before
tampering, so no test sees another's damage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from retinascan_hf import FeatureBank
from retinascan_hf.feature_bank import FEATURE_BANK_NAME, OODReference
from retinascan_hf.tiny_clip import random_retinascan

GRADES = [0, 1, 2, 3, 4]
# Every pipeline result holds exactly these keys (more only when asked for: top_k, neighbors, heatmap).
RESULT_KEYS = {
    "grade",
    "label",
    "scores",
    "referable",
    "mode",
    "gradable",
    "grade_set",
    "ood_score",
    "reason",
    "error_type",
}


def build_model_folder(directory: Path, images: Sequence[Image.Image], ood_threshold: float = 4.0) -> Path:
    """A tiny model folder whose bank holds `images` (grades 0-4 repeating) and their OOD reference, and whose
    config carries `ood_threshold`: everything a trained model folder has."""
    model, processor = random_retinascan(seed=0)
    model.config.ood_threshold = ood_threshold
    with torch.no_grad():
        outputs = model(**processor(list(images)))
    grades = [GRADES[index % 5] for index in range(len(images))]
    bank = FeatureBank(
        outputs.embeddings,
        grades,
        image_ids=[f"synthetic/{index}" for index in range(len(images))],
        config_hash=model.config.embedding_hash(),
        ood_reference=OODReference(outputs.image_features),
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    bank.save_pretrained(directory)
    return directory


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_json(path: Path, **changes: Any) -> None:
    """Set top-level fields of a JSON file (a value of `...` deletes the field)."""
    values = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            values.pop(key, None)
        else:
            values[key] = value
    path.write_text(json.dumps(values))  # json.dumps writes NaN/Infinity, as a careless or hostile editor might


def edit_safetensors(path: Path, tensors: dict[str, torch.Tensor] | None = None, metadata: dict | None = None) -> None:
    """Replace (or, with `None` values, drop) tensors and metadata entries of a safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        stored = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        stored_metadata = handle.metadata() or {}
    for key, value in (tensors or {}).items():
        if value is None:
            stored.pop(key, None)
        else:
            stored[key] = value
    for key, value in (metadata or {}).items():
        if value is None:
            stored_metadata.pop(key, None)
        else:
            stored_metadata[key] = value
    save_file({key: value.contiguous() for key, value in stored.items()}, str(path), metadata=stored_metadata)


def read_tensor(path: Path, name: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


def bank_path(folder: Path) -> Path:
    return folder / FEATURE_BANK_NAME


__all__ = [
    "GRADES",
    "RESULT_KEYS",
    "bank_path",
    "build_model_folder",
    "copy_folder",
    "edit_json",
    "edit_safetensors",
    "read_tensor",
]
