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
from safetensors import safe_open
from transformers.utils import CONFIG_NAME, logging

from ..feature_bank import FEATURE_BANK_NAME, FeatureBank
from ..image_processing_retinascan import RetinaScanImageProcessor
from ..modeling_retinascan import RetinaScanModel
from ..onnx_backend import (
    EXPORT_CONFIG_NAME,
    ONNX_SUBFOLDER,
    ONNX_VARIANT_FILES,
    check_export,
    resolve_weight_files,
    sha256_of_files,
)
from .card import CARD_NAME, CardFacts, card_files, render_model_card

logger = logging.get_logger(__name__)

ONNX_FOLDER = ONNX_SUBFOLDER
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


def _weight_tensors(folder: Path) -> dict[str, object]:
    """Tensor name -> the open safetensors file holding it, over every weight file of `folder`."""
    handles = {}
    for path in resolve_weight_files(folder, local_files_only=True):
        if path.endswith(".safetensors"):
            handle = safe_open(path, framework="pt")
            handles.update(dict.fromkeys(handle.keys(), handle))
    return handles


def _stage_onnx_export(model_dir: Path, staging: Path) -> None:
    """Copy the ONNX export of `model_dir` into the release, its record re-pointed at the staged weights.

    The record names the sha256 of the weights its graphs were made from, and the ONNX backend refuses an export
    beside other weights. Staging re-writes the weights (without the text tower, which the graphs never read), so
    the export is released only if it was made from the source's current weights and every staged tensor is
    bit-identical to the source's: the graphs are then exactly those of the released weights.
    """
    record = check_export(model_dir, local_files_only=True)
    source, staged = _weight_tensors(model_dir), _weight_tensors(staging)
    for name, handle in staged.items():
        if name not in source or not torch.equal(handle.get_tensor(name), source[name].get_tensor(name)):
            raise ValueError(
                f"The staged weights differ from those of {model_dir} in {name}, so its ONNX export would not match "
                "the released weights. Re-export the release folder (retinascan export-onnx) instead."
            )
    target = staging / ONNX_FOLDER
    target.mkdir()
    for variant, entry in record.variants.items():
        name = str(entry.get("file", ONNX_VARIANT_FILES[variant]))
        if Path(name).name != name:
            raise ValueError(f"{model_dir / ONNX_FOLDER / EXPORT_CONFIG_NAME} names a graph outside its folder: {name}")
        shutil.copyfile(model_dir / ONNX_FOLDER / name, target / name)
    record.weights_sha256 = sha256_of_files(resolve_weight_files(staging, local_files_only=True))
    (target / EXPORT_CONFIG_NAME).write_text(json.dumps(record.to_json(), indent=2) + "\n")


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
        bank.check_compatible(
            model.config.embedding_dim, model.config.embedding_hash(), num_labels=model.config.num_labels
        )
        bank.save_pretrained(staging)
        bank_size = len(bank)
    if (model_dir / ONNX_FOLDER).is_dir():
        if storage_dtype == "float32":
            _stage_onnx_export(model_dir, staging)
        else:
            logger.warning(
                f"The ONNX export of {model_dir} is not released: its graphs hold the float32 weights, which "
                f"{storage_dtype} storage rounds. Release with float32 storage to ship it."
            )
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
