"""`pipeline("retinascan")`: fundus photographs in, ICDR grades out.

`preprocess` does the I/O and image work (and turns a bad input into a flagged item rather than an
exception, so one bad file never loses a batch), `_forward` only moves tensors through the model and
the feature bank, `postprocess` turns tensors into plain Python.

Every result says whether the image was graded (`gradable`) and how far it lies from the training images
(`ood_score`). An image is not graded, and its grade, label, scores and referral are `None`, when it is not
a usable image (`error_type` names the exception), fails the processor's quality check (`"LowQuality"`:
no round field of view, out of focus, badly exposed), lies farther from the feature bank than the
calibrated `ood_threshold` (`"OutOfDistribution"`), or the model produced NaN/inf (`"NonFiniteOutput"`).

Decision modes:
    - `"knn"` (default when the model folder has a feature bank): vote of the k nearest training images.
    - `"ordinal"`: the CORAL head with the calibrated temperature and thresholds from the config.
    - `"prototype"`: nearest grade description (cosine to the text prototypes), calibrated softmax.

This file is copied verbatim into model repositories as remote code (relative imports only).
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from typing import Any

import torch
from transformers import Pipeline

from .feature_bank import FeatureBank
from .image_processing_retinascan import describe_input
from .modeling_retinascan import DECISION_MODES, decide
from .validation_retinascan import check_number

LOW_QUALITY = "LowQuality"
OUT_OF_DISTRIBUTION = "OutOfDistribution"
NON_FINITE_OUTPUT = "NonFiniteOutput"


def _as_list(value: Any) -> list:
    """Batched string fields arrive as lists, unbatched ones as scalars: normalise to a list."""
    return value if isinstance(value, list) else [value]


def _first(value: Any) -> Any:
    return _as_list(value)[0]


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
    with `grade`, `label`, `scores` (5 floats summing to 1), `referable` (grade >= 2), `mode`, `gradable`,
    `ood_score` (float, or `None` without a feature bank) and, for an image that was not graded, `reason`
    (words) and `error_type` (the exception's class name, or `"LowQuality"`, `"OutOfDistribution"`,
    `"NonFiniteOutput"`); grade, label, scores and referable are then `None`.

    Args:
        feature_bank (`FeatureBank`, `str` or `None`):
            The bank for `mode="knn"`. By default, the model folder's (or Hub repo's) `feature_bank.safetensors`
            is used if present; pass `False` to use none.
        mode, k, return_neighbors, timeout: call-time options (see `__call__`).
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, feature_bank: FeatureBank | str | os.PathLike | bool | None = None, **kwargs):
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
            config = self.model.config
            bank.check_compatible(
                config.embedding_dim, config.embedding_hash(), dtype=self.model.dtype, num_labels=config.num_labels
            )
        return bank

    def _sanitize_parameters(self, mode=None, k=None, return_neighbors=None, timeout=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for the retinascan pipeline: {sorted(kwargs)}.")
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if timeout is not None:
            preprocess_params["timeout"] = check_number("timeout", timeout, low=0, low_open=True)
        if mode is not None:
            if mode not in DECISION_MODES:
                raise ValueError(f"mode must be one of {DECISION_MODES}, got {mode!r}.")
            forward_params["mode"] = mode
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"k must be a positive integer, got {k!r}.")
            forward_params["k"] = int(k)  # capped at the bank's size when used
        if return_neighbors is not None:
            postprocess_params["return_neighbors"] = bool(return_neighbors)
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs, **kwargs):
        """Grade one input or a list of inputs; options: `mode`, `k`, `return_neighbors`, `timeout`, `batch_size`."""
        if isinstance(inputs, (list, tuple)) and not inputs:
            self._sanitize_parameters(**kwargs)  # bad options still raise
            return []
        return super().__call__(inputs, **kwargs)

    def preprocess(self, image, timeout: float | None = None) -> dict[str, Any]:
        size = self.image_processor.output_size
        reason, error_type = "", ""
        try:
            prepared = self.image_processor.prepare(image, timeout=timeout)
            pixel_values = torch.from_numpy(self.image_processor.normalize_image(prepared.image)).unsqueeze(0)
            if prepared.problems:
                reason = f"{describe_input(image)} is not gradable: {'; '.join(prepared.problems)}."
                error_type = LOW_QUALITY
        except Exception as exc:  # one bad input must not take the batch down: flag it instead
            pixel_values, error_type = torch.zeros(1, 3, size, size), type(exc).__name__
            # The processor's own errors (ValueError subclasses) already name the input. Matching on the base
            # class, not on RetinaScanInputError, matters: remote code may load processor and pipeline from
            # separately imported copies of the same file.
            reason = str(exc) if isinstance(exc, ValueError) else f"Could not process {describe_input(image)}: {exc}"
        # `pixel_values` first: the pipeline's batch iterator reads the batch size off the first entry.
        return {
            "pixel_values": pixel_values,
            "valid": torch.tensor([not error_type]),
            "reason": reason,
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
        bank, config = self.feature_bank, self.model.config
        valid = model_inputs["valid"].bool().cpu()
        pixel_values = model_inputs["pixel_values"]
        batch = valid.shape[0]
        reasons, error_types = list(_as_list(model_inputs["reason"])), list(_as_list(model_inputs["error_type"]))
        k = min(k or config.knn_k, len(bank)) if bank is not None else 1  # never more neighbours than rows
        scores = torch.zeros(batch, config.num_labels)
        grades = torch.zeros(batch, dtype=torch.long)
        ood_scores = torch.full((batch,), float("nan"))
        neighbor_idx = torch.full((batch, k), -1, dtype=torch.long)
        neighbor_sim = torch.zeros(batch, k)
        if valid.any():
            rows = torch.nonzero(valid).flatten()
            outputs = self.model(pixel_values=pixel_values[valid.to(pixel_values.device)].to(self.model.dtype))
            decision = decide(outputs, mode, config, bank, k)
            scores[rows], grades[rows] = decision.scores.float().cpu(), decision.grades.cpu()
            neighbors = decision.neighbors
            if neighbors is not None:
                width = neighbors.indices.shape[1]
                neighbor_idx[rows, :width] = neighbors.indices.cpu()
                neighbor_sim[rows, :width] = neighbors.similarities.float().cpu()
            embeddings = outputs.embeddings.float()
            ood = bank.ood_scores(outputs.image_features.float()) if bank is not None else None
            if ood is not None:
                ood_scores[rows] = ood.float().cpu()
            finite = torch.isfinite(embeddings).all(dim=-1).cpu() & torch.isfinite(scores[rows]).all(dim=-1)
            for row, row_finite in zip(rows.tolist(), finite.tolist(), strict=True):
                problem = self._output_problem(row_finite, float(ood_scores[row]), config.ood_threshold)
                if problem is not None:
                    valid[row] = False
                    error_types[row], reasons[row] = problem
        return {
            "scores": scores,
            "grade": grades,
            "valid": valid,
            "ood_score": ood_scores,
            "neighbor_indices": neighbor_idx,
            "neighbor_similarities": neighbor_sim,
            "mode": [mode] * batch,
            "reason": reasons,
            "error_type": error_types,
        }

    @staticmethod
    def _output_problem(finite: bool, ood_score: float, threshold: float | None) -> tuple[str, str] | None:
        """`(error_type, reason)` when a model output must not become a grade: the last line of defence."""
        if not finite or (not math.isnan(ood_score) and not math.isfinite(ood_score)):
            return NON_FINITE_OUTPUT, "The model produced NaN or infinite values for this image; it was not graded."
        if threshold is not None and ood_score > threshold:
            return (
                OUT_OF_DISTRIBUTION,
                f"The image lies far from every training image (ood_score {ood_score:.2f} > {threshold:.2f}): "
                "it does not look like a fundus photograph this model knows, so it was not graded.",
            )
        return None

    def postprocess(self, model_outputs: dict[str, Any], return_neighbors: bool = False) -> dict[str, Any]:
        ood_score = float(model_outputs["ood_score"].reshape(-1)[0])
        result = {
            "grade": None,
            "label": None,
            "scores": None,
            "referable": None,
            "mode": _first(model_outputs["mode"]),
            "gradable": bool(model_outputs["valid"].reshape(-1)[0]),
            "ood_score": ood_score if math.isfinite(ood_score) else None,
            "reason": None,
            "error_type": None,
        }
        if not result["gradable"]:
            result["reason"], result["error_type"] = (
                _first(model_outputs["reason"]),
                _first(model_outputs["error_type"]),
            )
            return result
        grade = int(model_outputs["grade"].reshape(-1)[0])
        result["grade"], result["label"] = grade, self.model.config.id2label[grade]
        result["scores"] = [float(value) for value in model_outputs["scores"].reshape(-1)]
        result["referable"] = grade >= self.model.config.referable_grade
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
