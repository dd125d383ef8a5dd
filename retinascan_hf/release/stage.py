"""Stage a release: one folder holding everything a user of the Hub repo needs, and nothing else.

Weights and config (with `auto_map` and `custom_pipelines`), the remote-code files, the processor config, the
feature bank, the ONNX export when present, and the model card. Artefacts are re-read through their loaders
(which validate them) and re-written, not copied blindly, so a tampered or half-written source folder fails here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import CONFIG_NAME

from ..feature_bank import FEATURE_BANK_NAME, FeatureBank
from ..image_processing_retinascan import RetinaScanImageProcessor
from ..modeling_retinascan import RetinaScanModel
from .card import CARD_NAME, CardFacts, card_files, render_model_card

ONNX_FOLDER = "onnx"
STORAGE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class StagedFile:
    name: str
    size: int


def _required_code_files(config_path: Path) -> set[str]:
    """The `.py` files that `auto_map` and `custom_pipelines` point at: a release without them cannot load."""
    config = json.loads(config_path.read_text())
    modules = {reference.split(".")[0] for reference in config.get("auto_map", {}).values()}
    modules |= {entry["impl"].split(".")[0] for entry in config.get("custom_pipelines", {}).values()}
    return {f"{module}.py" for module in modules}


def stage_release(
    model_dir: Path,
    staging: Path,
    facts: CardFacts,
    *,
    storage_dtype: str = "float32",
    keep_text_tower: bool = False,
) -> list[StagedFile]:
    """Write the release of `model_dir` into the empty folder `staging`; return its files with sizes.

    The CLIP text tower is dropped unless `keep_text_tower` (grading never runs it; see
    `RetinaScanModel.drop_text_tower`). `storage_dtype="float16"` halves the weights on disk; `config.json` still
    says float32, so loaders compute in float32 (fp16 arithmetic is slow and imprecise on CPUs) and only the storage
    is rounded.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}.")
    model_dir, staging = Path(model_dir), Path(staging)
    model = RetinaScanModel.from_pretrained(model_dir, dtype=torch.float32)
    processor = RetinaScanImageProcessor.from_pretrained(model_dir)
    if not keep_text_tower and model.config.text_tower:
        model.drop_text_tower()
    model.to(STORAGE_DTYPES[storage_dtype]).save_pretrained(staging)
    if storage_dtype != "float32":
        config_path = staging / CONFIG_NAME
        config = json.loads(config_path.read_text())
        config["dtype"] = "float32"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    processor.save_pretrained(staging)
    bank_size = None
    if (model_dir / FEATURE_BANK_NAME).is_file():
        bank = FeatureBank.from_file(model_dir / FEATURE_BANK_NAME)
        bank.check_compatible(model.config.embedding_dim, model.config.embedding_hash())
        bank.save_pretrained(staging)
        bank_size = len(bank)
    if (model_dir / ONNX_FOLDER).is_dir() and storage_dtype == "float32":
        shutil.copytree(model_dir / ONNX_FOLDER, staging / ONNX_FOLDER)
    missing = sorted(_required_code_files(staging / CONFIG_NAME) - {path.name for path in staging.glob("*.py")})
    if missing:
        raise FileNotFoundError(f"The staged release lacks remote-code files {missing}: it could not load.")
    names = [path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file()]
    facts.files = card_files(names)
    card = render_model_card(model.config, facts, bank_size=bank_size)
    card.save(staging / CARD_NAME)
    return [
        StagedFile(path.relative_to(staging).as_posix(), path.stat().st_size)
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    ]


__all__ = ["ONNX_FOLDER", "STORAGE_DTYPES", "StagedFile", "stage_release"]
