"""The ONNX Runtime backend of `pipeline("retinascan", backend="onnx")`: the exported image tower and heads
behind the same interface as [`RetinaScanModel`], so the pipeline's preprocessing, bad-input handling and
decision code (`decide`: kNN vote, calibration, ...) are the ones the torch backend runs.

The export (`retinascan export-onnx`, see `retinascan_hf.onnx_export`) writes `onnx/model.onnx` (fp32) and
`onnx/model_int8.onnx` beside the weights, and `onnx/export_config.json` recording the opset, the library
versions and the sha256 of the weights it came from. Loading checks that record against the weights the
folder holds now, so an export left behind by a retrained model is refused instead of grading with old
weights. This file runs graphs; it never imports the exporter, and torch runs no model forward here.

This file is copied verbatim into model repositories as remote code (relative imports only), so Hub users
get the ONNX backend with `trust_remote_code=True`. `onnxruntime` is imported only when a session is built,
inside `try` (transformers' remote-code import check skips it): without it, only this backend fails, with
an install hint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from .configuration_retinascan import RetinaScanConfig
from .modeling_retinascan import RetinaScanOutput, ordinal_grades, ordinal_probabilities

BACKENDS: tuple[str, ...] = ("torch", "onnx")
ONNX_SUBFOLDER = "onnx"
ONNX_VARIANT_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
EXPORT_CONFIG_NAME = "export_config.json"
ONNX_INPUT_NAME = "pixel_values"
# What the graph computes: everything `decide` and the pipeline read is derived from these with torch tensor ops.
ONNX_OUTPUT_NAMES: tuple[str, ...] = ("ordinal_logits", "prototype_logits", "embeddings", "image_features")
INSTALL_HINT = "pip install 'retinascan-hf[onnx]'  (or: pip install onnxruntime)"
_FORMAT = "retinascan-onnx-export"
_VERSION = 1


class OnnxExportMissingError(FileNotFoundError):
    """The model folder has no ONNX export (or not the requested variant)."""


class StaleOnnxExportError(ValueError):
    """The ONNX export was made from other weights (or graph settings) than the folder holds now."""


def import_onnxruntime() -> Any:
    """`onnxruntime`, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"The ONNX backend needs onnxruntime, which is not installed: {INSTALL_HINT}.") from error
    return onnxruntime


def export_hint(source: str, variant: str) -> str:
    """The command that creates a missing export."""
    return f"retinascan export-onnx --model {source}" + (" --int8" if variant == "int8" else "")


def sha256_of_files(paths: list[str]) -> str:
    """One sha256 over the bytes of `paths`, in order (streamed: memory stays flat for GB-sized weights)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_weight_files(pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs) -> list[str]:
    """Local paths of the safetensors weights (one file, or the shards an index names), resolved like the model."""
    source = str(pretrained_model_name_or_path)
    single = cached_file(source, SAFE_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if single is not None:
        return [single]
    index = cached_file(source, SAFE_WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if index is None:
        raise OnnxExportMissingError(f"{source} holds no safetensors weights ({SAFE_WEIGHTS_NAME} or an index).")
    with open(index, encoding="utf-8") as handle:
        shards = sorted(set(json.load(handle)["weight_map"].values()))
    return [index] + [cached_file(source, shard, **hub_kwargs) for shard in shards]


def graph_settings(config: RetinaScanConfig) -> dict[str, Any]:
    """Config values baked into the exported graph (calibration values are not: they are applied in torch)."""
    return {
        "embedding_hash": config.embedding_hash(),
        "prototype_temperature": config.prototype_temperature,
        "num_labels": config.num_labels,
        "image_size": config.backbone_config.vision_config.image_size,
    }


@dataclass
class OnnxExportRecord:
    """Contents of `onnx/export_config.json`: what was exported, from which weights, with which tools.

    Attributes:
        weights_sha256: sha256 of the safetensors weight files the graphs were exported from.
        graph: [`graph_settings`] of the config at export time.
        variants: per variant (`"fp32"`, `"int8"`): `file`, `bytes`, `sha256` and, for int8, `quantization`.
        opset, versions, exporter: provenance (ONNX opset; onnx / onnxruntime / torch / transformers versions).
        parity: largest |difference| per output to the torch model on the export's check batch, per variant.
    """

    weights_sha256: str
    graph: dict[str, Any]
    opset: int
    versions: dict[str, str]
    exporter: str
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "input": ONNX_INPUT_NAME,
            "outputs": list(ONNX_OUTPUT_NAMES),
            "weights_sha256": self.weights_sha256,
            "graph": self.graph,
            "opset": self.opset,
            "versions": self.versions,
            "exporter": self.exporter,
            "variants": self.variants,
            "parity": self.parity,
        }

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> OnnxExportRecord:
        """Read and validate an `export_config.json` (a foreign or newer file raises ValueError)."""
        try:
            with open(path, encoding="utf-8") as handle:
                payload = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read the ONNX export record {path}: {error}") from error
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a RetinaScan ONNX export record.")
        if payload.get("version") != _VERSION:
            raise ValueError(f"{path} has export record version {payload.get('version')}; this code reads {_VERSION}.")
        if payload.get("input") != ONNX_INPUT_NAME or payload.get("outputs") != list(ONNX_OUTPUT_NAMES):
            raise ValueError(f"{path} records inputs/outputs this code does not produce: re-export the model.")
        try:
            return cls(
                weights_sha256=str(payload["weights_sha256"]),
                graph=dict(payload["graph"]),
                opset=int(payload["opset"]),
                versions=dict(payload["versions"]),
                exporter=str(payload["exporter"]),
                variants=dict(payload["variants"]),
                parity=dict(payload.get("parity", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is missing or has malformed fields: {error}") from error


class RetinaScanOnnxModel:
    """An ONNX Runtime session that stands in for [`RetinaScanModel`] at inference: `model(pixel_values=...)`
    returns a [`RetinaScanOutput`] whose `probs` and `predicted_grade` come from the same functions as the
    torch model's. It has what `Pipeline` reads of a model (`config`, `dtype`, `device`, ...) and no weights
    in torch.

    Build it with [`from_pretrained`]; `num_threads` sets ONNX Runtime's intra-op threads (default: torch's).
    """

    main_input_name = ONNX_INPUT_NAME
    input_modalities = ("image",)
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, session: Any, config: RetinaScanConfig, variant: str, record: OnnxExportRecord):
        self.session = session
        self.config = config
        self.variant = variant
        self.record = record
        self.pretrained_source: dict[str, Any] | None = None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        variant: str = "int8",
        num_threads: int | None = None,
        onnx_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        subfolder: str = "",
    ) -> RetinaScanOnnxModel:
        """Load the `variant` export of a model folder or Hub repo (from its `onnx/`, or from `onnx_dir`).

        Raises [`OnnxExportMissingError`] (with the command that makes one) when there is no such export,
        [`StaleOnnxExportError`] when it was made from other weights, and ImportError (with the install
        command) without onnxruntime.
        """
        if variant not in ONNX_VARIANT_FILES:
            raise ValueError(f"onnx_variant must be one of {tuple(ONNX_VARIANT_FILES)}, got {variant!r}.")
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads}.")
        source = str(pretrained_model_name_or_path)
        hub_kwargs = {
            "revision": revision,
            "cache_dir": cache_dir,
            "token": token,
            "local_files_only": local_files_only,
            "subfolder": subfolder,
        }
        config = RetinaScanConfig.from_pretrained(source, **hub_kwargs)
        record, model_path = _resolve_export(source, variant, onnx_dir, hub_kwargs)
        _check_fresh(record, config, source, hub_kwargs)
        model = cls(_make_session(model_path, num_threads), config, variant, record)
        model.pretrained_source = {"pretrained_model_name_or_path": source, **hub_kwargs}
        return model

    def __call__(
        self, pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None, **kwargs
    ) -> RetinaScanOutput:
        """Grade a batch of `pixel_values` `[B, 3, H, W]` (what `RetinaScanImageProcessor` makes)."""
        if image_features is not None or kwargs.get("labels") is not None:
            raise ValueError("The ONNX backend runs pixels through the exported graph only (no image_features/labels).")
        if pixel_values is None:
            raise ValueError("The ONNX backend needs `pixel_values`.")
        side = self.config.backbone_config.vision_config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, side, side):
            raise ValueError(
                f"The ONNX graph takes pixel_values of shape [B, 3, {side}, {side}], got {tuple(pixel_values.shape)}."
            )
        array = np.ascontiguousarray(pixel_values.detach().to("cpu", torch.float32).numpy())
        values = self.session.run(list(ONNX_OUTPUT_NAMES), {ONNX_INPUT_NAME: array})
        outputs = {name: torch.from_numpy(value) for name, value in zip(ONNX_OUTPUT_NAMES, values, strict=True)}
        logits = outputs["ordinal_logits"]
        thresholds = torch.tensor(self.config.coral_thresholds)
        temperature = self.config.ordinal_temperature
        return RetinaScanOutput(
            probs=ordinal_probabilities(logits, temperature, thresholds),
            predicted_grade=ordinal_grades(logits, temperature, thresholds),
            **outputs,
        )

    def to(self, device: str | torch.device) -> RetinaScanOnnxModel:
        """The session runs on the CPU; asking for another device is an error, not a silent no-op."""
        if torch.device(device).type != "cpu":
            raise ValueError(f"The ONNX backend runs on the CPU; got device {device}.")
        return self

    def eval(self) -> RetinaScanOnnxModel:
        return self

    def can_generate(self) -> bool:
        return False

    def save_pretrained(self, *args, **kwargs) -> None:
        raise NotImplementedError(
            "An ONNX-backed model cannot be saved: save the torch model's folder, then run `retinascan export-onnx`."
        )

    def __repr__(self) -> str:
        return f"RetinaScanOnnxModel(variant={self.variant!r}, opset={self.record.opset})"


def _locate(source: str, onnx_dir: str | os.PathLike | None, name: str, hub_kwargs: dict[str, Any]) -> str | None:
    """Local path of export file `name`: in `onnx_dir` if given, else in the model's `onnx/` (folder or Hub)."""
    if onnx_dir is not None:
        path = os.path.join(onnx_dir, name)
        return path if os.path.isfile(path) else None
    return cached_file(source, f"{ONNX_SUBFOLDER}/{name}", _raise_exceptions_for_missing_entries=False, **hub_kwargs)


def _resolve_export(
    source: str, variant: str, onnx_dir: str | os.PathLike | None, hub_kwargs: dict[str, Any]
) -> tuple[OnnxExportRecord, str]:
    """The export record and the local path of the variant's graph, or an error naming the fix."""
    hint = export_hint(source, variant)
    record_path = _locate(source, onnx_dir, EXPORT_CONFIG_NAME, hub_kwargs)
    where = onnx_dir if onnx_dir is not None else f"{source}/{ONNX_SUBFOLDER}"
    if record_path is None:
        raise OnnxExportMissingError(f"No ONNX export in {where} ({EXPORT_CONFIG_NAME} is missing). Create it: {hint}")
    record = OnnxExportRecord.from_file(record_path)
    entry = record.variants.get(variant)
    if entry is None:
        raise OnnxExportMissingError(
            f"The ONNX export in {where} has no {variant} variant (it has {sorted(record.variants) or 'none'}). "
            f"Create it: {hint}"
        )
    file_name = entry.get("file", ONNX_VARIANT_FILES[variant])
    model_path = _locate(source, onnx_dir, file_name, hub_kwargs)
    if model_path is None:
        raise OnnxExportMissingError(f"{where}/{file_name} is recorded in {EXPORT_CONFIG_NAME} but missing: {hint}")
    if "bytes" in entry and os.path.getsize(model_path) != int(entry["bytes"]):
        raise StaleOnnxExportError(f"{model_path} is not the file its export record describes (size differs): {hint}")
    return record, model_path


def _check_fresh(record: OnnxExportRecord, config: RetinaScanConfig, source: str, hub_kwargs: dict[str, Any]) -> None:
    """Refuse an export made from other weights or graph settings than the folder's current ones."""
    hint = export_hint(source, "fp32")
    current = sha256_of_files(resolve_weight_files(source, **hub_kwargs))
    if current != record.weights_sha256:
        raise StaleOnnxExportError(
            f"The ONNX export of {source} was made from other weights (sha256 {record.weights_sha256[:12]}...; the "
            f"folder now holds {current[:12]}...). Re-export it: {hint} [--int8]"
        )
    settings = graph_settings(config)
    if settings != record.graph:
        keys = settings.keys() | record.graph.keys()
        changed = sorted(key for key in keys if settings.get(key) != record.graph.get(key))
        raise StaleOnnxExportError(
            f"The ONNX export of {source} predates config changes to {changed}. Re-export it: {hint}"
        )


def check_export(pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs) -> OnnxExportRecord:
    """The export record of a model folder (or Hub repo), after the checks loading makes: every recorded variant's
    graph is there with its recorded size, and the export was made from the current weights and config.

    Raises [`OnnxExportMissingError`] or [`StaleOnnxExportError`] (each with the command that fixes it).
    """
    source = str(pretrained_model_name_or_path)
    config = RetinaScanConfig.from_pretrained(source, **hub_kwargs)
    record, _ = _resolve_export(source, "fp32", None, hub_kwargs)  # every export holds fp32 (int8 derives from it)
    for variant in record.variants:
        _resolve_export(source, variant, None, hub_kwargs)
    _check_fresh(record, config, source, hub_kwargs)
    return record


# ONNX Runtime's worker threads spin while a graph runs and stop spinning when the run returns. Sleeping between a
# run's parallel operators too (the previous setting) made the int8 ViT-B/16 forward ~11 % slower; spinning on after
# the run (ONNX Runtime's default) cost the pipeline ~10 % more CPU per call for no gain in time, since between runs
# the cores do the pipeline's own work (benchmarks/onnx_threads.json).
SESSION_THREAD_CONFIG = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}


def _make_session(model_path: str, num_threads: int | None, thread_config: dict[str, str] | None = None) -> Any:
    """An ONNX Runtime CPU session: `num_threads` intra-op threads (default: torch's), every graph optimisation, and
    `thread_config` (default `SESSION_THREAD_CONFIG`) for how idle threads wait."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads) if num_threads is not None else torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in (SESSION_THREAD_CONFIG if thread_config is None else thread_config).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def select_backend(model: Any, backend: str, variant: str = "int8", num_threads: int | None = None) -> Any:
    """The model a pipeline runs for `backend`: `model` itself for `"torch"`; for `"onnx"`, the export found
    where `model` was loaded from (a [`RetinaScanOnnxModel`] is used as given)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "torch":
        if isinstance(model, RetinaScanOnnxModel):
            raise ValueError("backend='torch' was asked for, but the model given is an ONNX session.")
        return model
    if isinstance(model, RetinaScanOnnxModel):
        if model.variant != variant:
            raise ValueError(f"onnx_variant={variant!r} was asked for, but the ONNX model given is {model.variant!r}.")
        return model
    source = getattr(model, "pretrained_source", None)
    if not source:
        raise OnnxExportMissingError(
            "backend='onnx' loads the export saved beside the weights, and this model was not loaded from a folder "
            "or repo: save it, run `retinascan export-onnx --model DIR --int8`, and load that folder."
        )
    return RetinaScanOnnxModel.from_pretrained(**source, variant=variant, num_threads=num_threads)


__all__ = [
    "BACKENDS",
    "EXPORT_CONFIG_NAME",
    "INSTALL_HINT",
    "ONNX_INPUT_NAME",
    "ONNX_OUTPUT_NAMES",
    "ONNX_SUBFOLDER",
    "ONNX_VARIANT_FILES",
    "OnnxExportMissingError",
    "OnnxExportRecord",
    "RetinaScanOnnxModel",
    "StaleOnnxExportError",
    "check_export",
    "graph_settings",
    "import_onnxruntime",
    "resolve_weight_files",
    "select_backend",
    "sha256_of_files",
]
