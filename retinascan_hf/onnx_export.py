"""Export a saved model's image tower and heads to ONNX (fp32), and quantise it to int8 with ONNX Runtime.

`retinascan export-onnx --model DIR [--int8]` calls [`export_onnx`]. The graph maps `pixel_values`
`[batch, 3, H, W]` (dynamic batch) to `ordinal_logits`, `prototype_logits`, `embeddings` and
`image_features`: exactly `RetinaScanModel.forward`'s tensors, so every decision (kNN vote, calibrated
ordinal and prototype heads) stays in the torch code shared with the torch backend
(`retinascan_hf.onnx_backend`).

Choices, measured (see README "Benchmarks" and `benchmarks/onnx_parity.json`):
- `torch.onnx.export(dynamo=True)`, the default and maintained exporter in torch 2.13, exports
  transformers' CLIP vision tower as is (the TorchScript exporter also works but is deprecated).
- int8 is ONNX Runtime *dynamic* quantisation by default: int8 weights (signed, per output channel), activations
  quantised on the fly per tensor. It needs no calibration data: a model folder stores the bank's embeddings, not
  its training images. Static quantisation (`quantization="static"`) also fixes activation ranges from
  calibration images (a corpus or image folder); it is available and measured, not the default (see
  `scripts/onnx_parity.py`).
- The heads (everything downstream of `image_features`) stay fp32 in the int8 graph: they are 0.5 % of the
  compute, and ONNX Runtime's quantiser mis-fuses the CORAL head's broadcast bias (a `[B, 1]` matmul plus `K-1`
  biases) into a kernel that then fails at run time.
- So do three small parts of the image tower (`float32_node_names`), because int8 costs accuracy there and buys
  no speed (`scripts/benchmark_int8_sensitivity.py`): the position-embedding lookup (quantised, it is a per-tensor
  uint8 table dequantised on every call), the patch-embedding convolution (quantising it rounds the *pixels* to
  uint8 per tensor, and ONNX Runtime's ConvInteger is slower than its float convolution) and the visual
  projection (one 768 x 512 matrix that writes `image_features` itself). Together: 28 % less feature error and
  a slightly faster graph.

The folder `DIR/onnx/` is written through a staging folder and a rename, so an interrupted export never leaves
a half-written graph, and it is replaced only if an earlier export made it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic_io import atomic_directory, record_nested, write_json_atomically
from .image_processing_retinascan import RetinaScanImageProcessor
from .modeling_retinascan import RetinaScanModel
from .onnx_backend import (
    EXPORT_CONFIG_NAME,
    INSTALL_HINT,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAMES,
    ONNX_SUBFOLDER,
    ONNX_VARIANT_FILES,
    OnnxExportRecord,
    graph_settings,
    import_onnxruntime,
    resolve_weight_files,
    sha256_of_files,
)
from .synthetic import synthetic_fundus_set

ONNX_OPSET = 20
QUANTIZATION_METHODS: tuple[str, ...] = ("dynamic", "static")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# Export-time check: fp32 outputs must match torch this closely on the check batch, or the export is refused.
FP32_TOLERANCE = 1e-3


class _ExportedForward(nn.Module):
    """`RetinaScanModel.forward` on pixels, returning the graph outputs as a tuple (what the exporter traces)."""

    def __init__(self, model: RetinaScanModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values=pixel_values)
        return tuple(getattr(outputs, name) for name in ONNX_OUTPUT_NAMES)


@dataclass
class _CalibrationReader:
    """ONNX Runtime's calibration-data-reader protocol (`get_next`) over preprocessed images, one at a time."""

    pixel_values: np.ndarray
    position: int = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.pixel_values):
            return None
        self.position += 1
        return {ONNX_INPUT_NAME: self.pixel_values[self.position - 1 : self.position]}


def _import_quantization() -> Any:
    import_onnxruntime()
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as error:
        raise ImportError(f"ONNX export needs onnx and onnxruntime: {INSTALL_HINT}.") from error
    return onnx, quantization


FLOAT32_PARTS = "heads (downstream of image_features), visual projection, patch embedding, position-embedding lookup"


def _graph(model: str | os.PathLike | Any) -> Any:
    """The graph of `model`: an ONNX file (read once per call: pass the graph to read it once for several calls),
    or a graph already loaded."""
    if isinstance(model, (str, os.PathLike)):
        onnx, _ = _import_quantization()
        return onnx.load(str(model), load_external_data=False).graph
    return model


def with_quantiser_aliases(names: Sequence[str]) -> list[str]:
    """`names` and, for each, `X_MatMul`: the quantiser turns a Gemm `X` into a MatMul `X_MatMul` (plus an Add)
    before it applies exclusions, so an exclusion list must name both."""
    return [*names, *(f"{name}_MatMul" for name in names)]


def float32_node_names(model: str | os.PathLike | Any) -> list[str]:
    """The nodes the int8 graph keeps in float32 (see the module docstring): the heads, the node that writes
    `image_features` (the visual projection), and every lookup (Gather) and convolution, as the quantiser may
    rename them. `model` is an ONNX file or its loaded graph."""
    graph = _graph(model)
    tower = [node.name for node in graph.node if node.op_type in ("Gather", "Conv") or "image_features" in node.output]
    return head_node_names(graph) + with_quantiser_aliases(tower)


def head_node_names(model: str | os.PathLike | Any) -> list[str]:
    """Names of the graph nodes downstream of `image_features` (the heads), as the quantiser may rename them.
    `model` is an ONNX file or its loaded graph."""
    live, names = {"image_features"}, []
    for node in _graph(model).node:  # ONNX graphs are topologically sorted: one pass suffices
        if any(name in live for name in node.input):
            names.append(node.name)
            live.update(node.output)
    return with_quantiser_aliases(names)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser logs advice on the root logger ("consider pre-processing"): its symbolic shape
    inference fails on dynamo-exported graphs, so the advice does not apply. Silence it while quantising."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load_calibration_images(
    path: str | os.PathLike, processor: RetinaScanImageProcessor, count: int, seed: int = 0
) -> np.ndarray:
    """`count` preprocessed images `[N, 3, H, W]` from a corpus folder (`retinascan data build`, its train
    split) or a folder of image files, drawn at random with `seed`; unreadable images are skipped."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    if (path / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        split = load_from_disk(str(path))["train"]
        order = rng.permutation(len(split)).tolist()
        candidates = (split[index]["image"] for index in order)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        candidates = (str(files[index]) for index in rng.permutation(len(files)).tolist())
    else:
        raise FileNotFoundError(f"Calibration data {path} is neither a corpus folder nor a folder of images.")
    arrays = []
    for candidate in candidates:
        try:
            arrays.append(processor.normalize_image(processor.to_model_image(candidate)))
        except ValueError:  # a RetinaScanInputError: flagged as ungradable at inference, so not calibration data
            continue
        if len(arrays) == count:
            break
    if not arrays:
        raise ValueError(f"No usable calibration images in {path}.")
    return np.stack(arrays)


def _export_fp32(model: RetinaScanModel, example: torch.Tensor, target: Path, opset: int) -> None:
    program = torch.onnx.export(
        _ExportedForward(model).eval(),
        (example,),
        input_names=[ONNX_INPUT_NAME],
        output_names=list(ONNX_OUTPUT_NAMES),
        opset_version=opset,
        dynamo=True,
        verbose=False,
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
        external_data=False,
    )
    program.save(str(target), external_data=False)


def quantize_onnx(
    source: Path,
    target: Path,
    method: str,
    calibration: np.ndarray | None,
    keep_fp32: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Quantise `source` to int8 at `target`, leaving in float32 the nodes of `keep_fp32`, by default those of
    [`float32_node_names`] (`benchmarks/int8_sensitivity.py` tries other choices); return the settings for the
    export record."""
    _, quantization = _import_quantization()
    settings: dict[str, Any] = {
        "method": method,
        "weights": "int8 (signed), per output channel",
        "fp32_nodes": FLOAT32_PARTS if keep_fp32 is None else f"{len(keep_fp32)} nodes chosen by the caller",
    }
    common = {
        "per_channel": True,
        "weight_type": quantization.QuantType.QInt8,
        "nodes_to_exclude": float32_node_names(source) if keep_fp32 is None else list(keep_fp32),
    }
    with _quiet_root_logger():
        if method == "dynamic":
            quantization.quantize_dynamic(str(source), str(target), **common)
            settings["activations"] = "uint8, per tensor, ranges computed per input at run time"
        else:
            quantization.quantize_static(
                str(source),
                str(target),
                _CalibrationReader(calibration),
                quant_format=quantization.QuantFormat.QDQ,
                activation_type=quantization.QuantType.QUInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
                **common,
            )
            settings["activations"] = f"uint8, per tensor, MinMax ranges from {len(calibration)} calibration images"
    return settings


def _max_differences(session: Any, pixel_values: torch.Tensor, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    values = session.run(list(ONNX_OUTPUT_NAMES), {ONNX_INPUT_NAME: pixel_values.numpy()})
    return {
        name: float(np.abs(value - reference[name].numpy()).max())
        for name, value in zip(ONNX_OUTPUT_NAMES, values, strict=True)
    }


def _versions() -> dict[str, str]:
    import onnx
    import transformers

    return {
        "onnx": onnx.__version__,
        "onnxruntime": import_onnxruntime().__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def export_onnx(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    int8: bool = False,
    quantization: str = "dynamic",
    calibration_data: str | os.PathLike | None = None,
    calibration_size: int = 128,
    opset: int = ONNX_OPSET,
) -> OnnxExportRecord:
    """Export `model_dir`'s model to `output_dir` (default `model_dir/onnx`): `model.onnx`, with `int8` also
    `model_int8.onnx`, and `export_config.json`. Returns the record written.

    `quantization="static"` needs `calibration_data` (a corpus folder or a folder of images). The folder then
    holds exactly what this run made: an earlier export there is replaced as a whole.
    """
    if quantization not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization must be one of {QUANTIZATION_METHODS}, got {quantization!r}.")
    if quantization == "static" and int8 and calibration_data is None:
        raise ValueError("Static int8 quantisation needs calibration images: pass calibration_data.")
    if calibration_data is not None and not (int8 and quantization == "static"):
        raise ValueError("calibration_data is only used by int8 export with quantization='static'.")
    if calibration_size < 1:
        raise ValueError(f"calibration_size must be at least 1, got {calibration_size}.")
    ort = import_onnxruntime()
    model_dir = Path(model_dir)
    target = Path(output_dir) if output_dir is not None else model_dir / ONNX_SUBFOLDER
    weights_sha256 = sha256_of_files(resolve_weight_files(model_dir, local_files_only=True))
    model = RetinaScanModel.from_pretrained(model_dir, local_files_only=True).float().eval()
    processor = RetinaScanImageProcessor.from_pretrained(model_dir, local_files_only=True)
    check_batch = torch.from_numpy(
        np.stack([processor.normalize_image(processor.to_model_image(image)) for image in synthetic_fundus_set([0, 3])])
    )
    with torch.no_grad():
        outputs = model(pixel_values=check_batch)
    reference = {name: getattr(outputs, name) for name in ONNX_OUTPUT_NAMES}
    calibration = load_calibration_images(calibration_data, processor, calibration_size) if calibration_data else None
    record = OnnxExportRecord(
        weights_sha256=weights_sha256,
        graph=graph_settings(model.config),
        opset=opset,
        versions=_versions(),
        exporter="torch.onnx.export(dynamo=True)",
    )
    with atomic_directory(target, marker=EXPORT_CONFIG_NAME) as staging:
        fp32_path = staging / ONNX_VARIANT_FILES["fp32"]
        _export_fp32(model, check_batch, fp32_path, opset)
        variants = {"fp32": {}}
        if int8:
            settings = quantize_onnx(fp32_path, staging / ONNX_VARIANT_FILES["int8"], quantization, calibration)
            variants["int8"] = {"quantization": settings}
        for variant, entry in variants.items():
            path = staging / ONNX_VARIANT_FILES[variant]
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            record.parity[variant] = _max_differences(session, check_batch, reference)
            entry.update(file=path.name, bytes=path.stat().st_size, sha256=sha256_of_files([str(path)]))
        record.variants = variants
        worst = max(record.parity["fp32"].values())
        if not worst <= FP32_TOLERANCE:  # also catches NaN
            raise RuntimeError(
                f"The fp32 ONNX graph differs from torch by {worst:.3g} (> {FP32_TOLERANCE}); not saved."
            )
        write_json_atomically(staging / EXPORT_CONFIG_NAME, record.to_json())
    if target.absolute().parent == model_dir.absolute():
        # A model folder that training wrote lists what it holds: the export becomes part of it, so a later
        # training run may still replace the folder (and the export, made from the old weights, goes with it).
        record_nested(model_dir, target)
    return record


__all__ = [
    "FLOAT32_PARTS",
    "ONNX_OPSET",
    "QUANTIZATION_METHODS",
    "export_onnx",
    "float32_node_names",
    "head_node_names",
    "load_calibration_images",
    "quantize_onnx",
    "with_quantiser_aliases",
]
