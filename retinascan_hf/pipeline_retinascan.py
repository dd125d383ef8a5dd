"""`pipeline("retinascan")`: fundus photographs in, ICDR grades out.

`preprocess` does the I/O and image work (and turns a bad input into a flagged item rather than an
exception, so one bad file never loses a batch), `_forward` only moves tensors through the model and
the feature bank, `postprocess` turns tensors into plain Python.

Decision modes:
    - `"knn"` (default when the model folder has a feature bank): vote of the k nearest training images.
    - `"ordinal"`: the CORAL head with the calibrated temperature and thresholds from the config.
    - `"prototype"`: nearest grade description (cosine to the text prototypes), calibrated softmax.

This file is copied verbatim into model repositories as remote code (relative imports only).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Pipeline
from transformers.pipelines.base import no_collate_fn, pad_collate_fn
from transformers.pipelines.pt_utils import PipelineIterator

from .feature_bank import FeatureBank
from .image_processing_retinascan import describe_input
from .modeling_retinascan import DECISION_MODES, decide
from .onnx_backend import select_backend


def _as_list(value: Any) -> list:
    """Batched string fields arrive as lists, unbatched ones as scalars: normalise to a list."""
    return value if isinstance(value, list) else [value]


def _first(value: Any) -> Any:
    return _as_list(value)[0]


class _ThreadedPreprocessing(Dataset):
    """`preprocess` of a list of inputs in a thread pool, up to `lookahead` items ahead of the one asked for.

    PIL decoding and resizing and numpy release the GIL, so threads decode the next images while the model runs
    on the current batch, without the worker processes of transformers' `num_workers` (which fork the whole
    process, model included, on every call). Items come back in order; memory stays bounded by `lookahead`.
    """

    def __init__(self, items: list, preprocess: Any, params: dict[str, Any], workers: int, lookahead: int):
        self.items, self.preprocess, self.params, self.lookahead = items, preprocess, params, lookahead
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retinascan-preprocess")
        self.futures: dict[int, Future] = {}
        self.submitted = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        while self.submitted < min(len(self.items), index + 1 + self.lookahead):
            self.futures[self.submitted] = self.executor.submit(
                self.preprocess, self.items[self.submitted], **self.params
            )
            self.submitted += 1
        future = self.futures.pop(index, None)
        result = future.result() if future is not None else self.preprocess(self.items[index], **self.params)
        if not self.futures and self.submitted == len(self.items):
            self.executor.shutdown(wait=False)
        return result


def pipeline_registration() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` entry a saved config carries, so remote code can rebuild this pipeline."""
    return {
        "retinascan": {
            "impl": f"{__name__.split('.')[-1]}.{RetinaScanPipeline.__name__}",
            "pt": ["AutoModel"],
            "tf": [],
            "type": "image",
        }
    }


class RetinaScanPipeline(Pipeline):
    """Grade diabetic retinopathy in fundus photographs.

    Inputs: a path, URL, bytes, PIL image or numpy array, or a list of them. Per image it returns a dict
    with `grade`, `label`, `scores` (5 floats summing to 1), `referable` (grade >= 2), `mode` and
    `gradable`; a bad input gives `{"gradable": False, "error": ...}` in its place.

    Args:
        feature_bank (`FeatureBank`, `str` or `None`):
            The bank for `mode="knn"`. By default, the model folder's (or Hub repo's) `feature_bank.safetensors`
            is used if present; pass `False` to use none.
        backend (`"torch"` or `"onnx"`, defaults to `"torch"`):
            `"onnx"` runs the ONNX Runtime export saved beside the weights (`retinascan export-onnx`) instead of
            the torch forward; preprocessing and decisions are the same code. Needs `retinascan-hf[onnx]`.
        onnx_variant (`"int8"` or `"fp32"`, defaults to `"int8"`), onnx_threads (`int`, *optional*):
            Which ONNX graph to run, and ONNX Runtime's thread count (default: `torch.get_num_threads()`).
        mode, k, return_neighbors, timeout: call-time options (see `__call__`).
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(
        self,
        *args,
        feature_bank: FeatureBank | str | os.PathLike | bool | None = None,
        backend: str = "torch",
        onnx_variant: str = "int8",
        onnx_threads: int | None = None,
        **kwargs,
    ):
        if args:
            args = (select_backend(args[0], backend, onnx_variant, onnx_threads), *args[1:])
        else:
            kwargs["model"] = select_backend(kwargs.get("model"), backend, onnx_variant, onnx_threads)
        if backend == "onnx" and kwargs.get("device") is None:
            kwargs["device"] = "cpu"  # the session runs on the CPU; Pipeline would otherwise pick a GPU if present
        self.backend = backend
        super().__init__(*args, **kwargs)
        self.feature_bank = self._resolve_bank(feature_bank)

    def _resolve_bank(self, feature_bank: FeatureBank | str | os.PathLike | bool | None) -> FeatureBank | None:
        if feature_bank is False:
            return None
        if feature_bank is None or feature_bank is True:
            # Same repo, revision and cache as the weights (see RetinaScanModel.from_pretrained).
            source = getattr(self.model, "pretrained_source", None)
            bank = FeatureBank.from_pretrained(**source, missing_ok=True) if source else None
        elif isinstance(feature_bank, FeatureBank):
            bank = feature_bank
        else:
            bank = FeatureBank.from_pretrained(feature_bank)
        if bank is not None:
            bank.check_compatible(
                self.model.config.embedding_dim, self.model.config.embedding_hash(), dtype=self.model.dtype
            )
        return bank

    def _sanitize_parameters(self, mode=None, k=None, return_neighbors=None, timeout=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for the retinascan pipeline: {sorted(kwargs)}.")
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if mode is not None:
            if mode not in DECISION_MODES:
                raise ValueError(f"mode must be one of {DECISION_MODES}, got {mode!r}.")
            forward_params["mode"] = mode
        if k is not None:
            if int(k) < 1:
                raise ValueError(f"k must be at least 1, got {k}.")
            forward_params["k"] = int(k)
        if return_neighbors is not None:
            postprocess_params["return_neighbors"] = bool(return_neighbors)
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs, **kwargs):
        """Grade one input or a list of inputs; options: `mode`, `k`, `return_neighbors`, `timeout`, `batch_size`."""
        return super().__call__(inputs, **kwargs)

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        """transformers' iterator, except that `num_workers` > 0 on a list of inputs means that many *threads*
        preprocessing ahead of inference (see `_ThreadedPreprocessing`), not worker processes."""
        if not num_workers or not isinstance(inputs, (list, tuple)):
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        lookahead = 2 * batch_size + num_workers
        dataset = _ThreadedPreprocessing(list(inputs), self.preprocess, preprocess_params, num_workers, lookahead)
        collate_fn = no_collate_fn if batch_size == 1 else pad_collate_fn(self.tokenizer, self.image_processor)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def preprocess(self, image, timeout: float | None = None) -> dict[str, Any]:
        size = self.image_processor.output_size
        try:
            picture = self.image_processor.to_model_image(image, timeout=timeout)
            pixel_values = torch.from_numpy(self.image_processor.normalize_image(picture)).unsqueeze(0)
            error, error_type = "", ""
        except Exception as exc:  # one bad input must not take the batch down: flag it instead
            pixel_values, error_type = torch.zeros(1, 3, size, size), type(exc).__name__
            # The processor's own errors (ValueError subclasses) already name the input. Matching on the base
            # class, not on RetinaScanInputError, matters: remote code may load processor and pipeline from
            # separately imported copies of the same file.
            error = str(exc) if isinstance(exc, ValueError) else f"Could not process {describe_input(image)}: {exc}"
        # `pixel_values` first: the pipeline's batch iterator reads the batch size off the first entry.
        return {
            "pixel_values": pixel_values,
            "valid": torch.tensor([not error_type]),
            "error": error,
            "error_type": error_type,
        }

    def _resolve_mode(self, mode: str | None) -> str:
        if mode is None:
            return "knn" if self.feature_bank is not None else "ordinal"
        if mode == "knn" and self.feature_bank is None:
            warnings.warn(
                "mode='knn' needs a feature bank and this model has none; using mode='ordinal'.", stacklevel=3
            )
            return "ordinal"
        return mode

    def _forward(self, model_inputs: dict[str, Any], mode: str | None = None, k: int | None = None) -> dict[str, Any]:
        mode = self._resolve_mode(mode)
        valid = model_inputs["valid"].bool().cpu()
        pixel_values = model_inputs["pixel_values"]
        batch = valid.shape[0]
        num_labels = self.model.config.num_labels
        scores = torch.zeros(batch, num_labels)
        grades = torch.zeros(batch, dtype=torch.long)
        k = k or self.model.config.knn_k
        neighbor_idx = torch.full((batch, k), -1, dtype=torch.long)
        neighbor_sim = torch.zeros(batch, k)
        if valid.any():
            outputs = self.model(pixel_values=pixel_values[valid.to(pixel_values.device)].to(self.model.dtype))
            decision = decide(outputs, mode, self.model.config, self.feature_bank, k)
            scores[valid], grades[valid] = decision.scores.float().cpu(), decision.grades.cpu()
            neighbors = decision.neighbors
            if neighbors is not None:
                width = neighbors.indices.shape[1]
                neighbor_idx[valid, :width] = neighbors.indices.cpu()
                neighbor_sim[valid, :width] = neighbors.similarities.float().cpu()
        return {
            "scores": scores,
            "grade": grades,
            "valid": valid,
            "neighbor_indices": neighbor_idx,
            "neighbor_similarities": neighbor_sim,
            "mode": [mode] * batch,
            "error": _as_list(model_inputs["error"]),
            "error_type": _as_list(model_inputs["error_type"]),
        }

    def postprocess(self, model_outputs: dict[str, Any], return_neighbors: bool = False) -> dict[str, Any]:
        if not bool(model_outputs["valid"].reshape(-1)[0]):
            return {
                "grade": None,
                "label": None,
                "scores": None,
                "referable": None,
                "gradable": False,
                "error": _first(model_outputs["error"]),
                "error_type": _first(model_outputs["error_type"]),
            }
        grade = int(model_outputs["grade"].reshape(-1)[0])
        result = {
            "grade": grade,
            "label": self.model.config.id2label[grade],
            "scores": [float(value) for value in model_outputs["scores"].reshape(-1)],
            "referable": grade >= self.model.config.referable_grade,
            "mode": _first(model_outputs["mode"]),
            "gradable": True,
        }
        if return_neighbors and result["mode"] == "knn":
            result["neighbors"] = self._describe_neighbors(
                model_outputs["neighbor_indices"].reshape(-1),
                model_outputs["neighbor_similarities"].reshape(-1),
            )
        return result

    def _describe_neighbors(self, indices: torch.Tensor, similarities: torch.Tensor) -> list[dict[str, Any]]:
        bank = self.feature_bank
        neighbors = []
        for index, similarity in zip(indices.tolist(), similarities.tolist(), strict=False):
            if index < 0:
                continue
            entry = {"index": index, "grade": int(bank.grades[index]), "similarity": float(similarity)}
            if bank.image_ids is not None:
                entry["image_id"] = bank.image_ids[index]
            if bank.sources is not None:
                entry["source"] = bank.sources[index]
            neighbors.append(entry)
        return neighbors

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save model, processor and (if any) feature bank: a complete model folder."""
        super().save_pretrained(save_directory, **kwargs)
        if self.feature_bank is not None:
            self.feature_bank.save_pretrained(save_directory)


__all__ = ["RetinaScanPipeline", "pipeline_registration"]
