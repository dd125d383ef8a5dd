"""`pipeline("retinascan")`: fundus photographs in, ICDR grades out.

`preprocess` does the I/O and image work (and turns a bad input into a flagged item rather than an
exception, so one bad file never loses a batch), `_forward` only moves tensors through the model and
the feature bank, `postprocess` turns tensors into plain Python.

Decision modes:
    - `"knn"` (default when the model folder has a feature bank): vote of the k nearest training images.
    - `"ordinal"`: the CORAL head with the calibrated temperature and thresholds from the config.
    - `"prototype"`: nearest grade description (cosine to the text prototypes), calibrated softmax.

`return_heatmap=True` explains each grade with Grad-CAM (`gradcam_retinascan.py`, imported only then).

This file is copied verbatim into model repositories as remote code (relative imports only).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from transformers import Pipeline

from .feature_bank import FeatureBank
from .image_processing_retinascan import describe_input
from .modeling_retinascan import DECISION_MODES, GradeDecision, decide


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
    with `grade`, `label`, `scores` (5 floats summing to 1), `referable` (grade >= 2), `mode` and
    `gradable`; a bad input gives `{"gradable": False, "error": ...}` in its place.

    Args:
        feature_bank (`FeatureBank`, `str` or `None`):
            The bank for `mode="knn"`. By default, the model folder's (or Hub repo's) `feature_bank.safetensors`
            is used if present; pass `False` to use none.
        mode, k, return_neighbors, return_heatmap, heatmap_grade, timeout: call-time options (see `__call__`).
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
            bank.check_compatible(
                self.model.config.embedding_dim, self.model.config.embedding_hash(), dtype=self.model.dtype
            )
        return bank

    def _sanitize_parameters(
        self, mode=None, k=None, return_neighbors=None, timeout=None, return_heatmap=None, heatmap_grade=None, **kwargs
    ):
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
        if return_heatmap is not None or heatmap_grade is not None:
            forward_params.update(self._heatmap_options(return_heatmap, heatmap_grade))
            postprocess_params["return_heatmap"] = forward_params["return_heatmap"]
        return preprocess_params, forward_params, postprocess_params

    def _heatmap_options(self, return_heatmap: bool | None, heatmap_grade: int | None) -> dict[str, Any]:
        if heatmap_grade is None:
            return {"return_heatmap": bool(return_heatmap), "heatmap_grade": None}
        if not return_heatmap:
            raise ValueError("heatmap_grade needs return_heatmap=True.")
        from .gradcam_retinascan import check_target_grade

        return {
            "return_heatmap": True,
            "heatmap_grade": check_target_grade(heatmap_grade, self.model.config.num_labels),
        }

    def __call__(self, inputs, **kwargs):
        """Grade one input or a list of inputs.

        Options: `mode`, `k`, `return_neighbors`, `timeout`, `batch_size`, and `return_heatmap=True`, which adds
        to each gradable result `heatmap` (float32 array `[S, S]` in [0, 1], Grad-CAM of the decided grade, or
        of `heatmap_grade` when given, aligned with `image_processor.to_model_image(input)`) and `overlay`
        (that cropped fundus as a PIL image with the heat map blended in).
        """
        return super().__call__(inputs, **kwargs)

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

    def _forward(
        self,
        model_inputs: dict[str, Any],
        mode: str | None = None,
        k: int | None = None,
        return_heatmap: bool = False,
        heatmap_grade: int | None = None,
    ) -> dict[str, Any]:
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
        extra = {}
        if valid.any():
            inputs = pixel_values[valid.to(pixel_values.device)].to(self.model.dtype)
            if return_heatmap:
                decision, extra = self._explain(inputs, valid, mode, k, heatmap_grade)
            else:
                decision = decide(self.model(pixel_values=inputs), mode, self.model.config, self.feature_bank, k)
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
            **extra,
        }

    def _explain(
        self, inputs: torch.Tensor, valid: torch.Tensor, mode: str, k: int, heatmap_grade: int | None
    ) -> tuple[GradeDecision, dict[str, torch.Tensor]]:
        """Decision and Grad-CAM maps from one forward pass; maps (and the pixels they overlay) for every row."""
        from .gradcam_retinascan import grad_cam

        explanation = grad_cam(self.model, inputs, mode, self.feature_bank, k, target_grade=heatmap_grade)
        size = inputs.shape[-1]
        heatmaps = torch.zeros(valid.shape[0], size, size)
        heatmaps[valid] = explanation.heatmaps.float().cpu()
        pixels = torch.zeros(valid.shape[0], 3, size, size)
        pixels[valid] = inputs.float().cpu()
        return explanation.decision, {"heatmap": heatmaps, "heatmap_pixels": pixels}

    def postprocess(
        self, model_outputs: dict[str, Any], return_neighbors: bool = False, return_heatmap: bool = False
    ) -> dict[str, Any]:
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
        if return_heatmap:
            result.update(self._heatmap_fields(model_outputs))
        return result

    def _heatmap_fields(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        from .gradcam_retinascan import overlay_heatmap, pixels_to_image

        processor = self.image_processor
        heatmap = model_outputs["heatmap"][0].numpy().copy()  # a copy: not a view into the batch's tensor
        picture = pixels_to_image(
            model_outputs["heatmap_pixels"][0], processor.image_mean, processor.image_std, processor.do_normalize
        )
        return {"heatmap": heatmap, "overlay": overlay_heatmap(picture, heatmap)}

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
