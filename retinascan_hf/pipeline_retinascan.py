"""`pipeline("retinascan")`: fundus photographs in, ICDR grades out.

`preprocess` does the I/O and image work (and turns a bad input into a flagged item rather than an
exception, so one bad file never loses a batch), `_forward` only moves tensors through the model and
the feature bank, `postprocess` turns tensors into plain Python.

Decision modes:
    - `"knn"` (default when the model folder has a feature bank): vote of the k nearest training images.
    - `"ordinal"`: the CORAL head with the calibrated temperature and thresholds from the config.
    - `"prototype"`: nearest grade description (cosine to the text prototypes), calibrated softmax.

`return_heatmap=True` explains each grade with Grad-CAM (`gradcam_retinascan.py`, imported only then).

Every result says whether the image was graded (`gradable`) and how far it lies from the training images
(`ood_score`). An image is not graded, and its grade, label, scores, referral and grade set are `None`, when it
is not a usable image (`error_type` names the exception), fails the processor's quality check (`"LowQuality"`:
no round field of view, out of focus, badly exposed), lies farther from the training images than the
calibrated `ood_threshold` (`"OutOfDistribution"`), or the model produced NaN/inf (`"NonFiniteOutput"`).

This file is copied verbatim into model repositories as remote code (relative imports only).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import no_collate_fn, pad_collate_fn
from transformers.pipelines.pt_utils import PipelineIterator
from transformers.utils import logging

from .configuration_retinascan import PIPELINE_TASK
from .feature_bank import FEATURE_BANK_NAME, FeatureBank, bank_location
from .image_processing_retinascan import describe_input
from .modeling_retinascan import DECISION_MODES, GradeDecision, RetinaScanOutput, decide
from .onnx_backend import select_backend
from .validation_retinascan import check_number

# A child of transformers' root logger, so that `transformers.logging.set_verbosity_*` and TRANSFORMERS_VERBOSITY
# apply to it (a logger named plainly `__name__` would sit outside transformers' hierarchy and ignore them).
logger = logging.get_logger(f"transformers.{__name__}")


LOW_QUALITY = "LowQuality"
OUT_OF_DISTRIBUTION = "OutOfDistribution"
NON_FINITE_OUTPUT = "NonFiniteOutput"


def _as_list(value: Any) -> list:
    """Batched string fields arrive as lists, unbatched ones as scalars: normalise to a list."""
    return value if isinstance(value, list) else [value]


def _first(value: Any) -> Any:
    return _as_list(value)[0]


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads, then restore the previous count.

    Why the ONNX path grades with one torch thread: there torch only runs small operations around the graph (the
    bank scans, batch copies), and with more threads torch's OpenMP workers spin on after each of them, holding the
    cores ONNX Runtime's threads need for the next graph run. That made each single-image call about 2 ms slower
    for no gain (benchmarks/onnx_threads.json). The setting is torch's, process-wide, for the duration of the call;
    a generator input, graded lazily after `__call__` returns, runs with the caller's count.
    """
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


def _grade_set(bounds: list[int]) -> list[int] | None:
    """Inclusive `[lowest, highest]` grade -> the list of grades; `None` where the model has no grade sets."""
    low, high = bounds
    return None if low < 0 else list(range(low, high + 1))


class RetinaScanPipeline(Pipeline):
    """Grade diabetic retinopathy in fundus photographs.

    Inputs: a path, URL, bytes, PIL image or numpy array, or a list of them. Per image it returns a dict
    with `grade`, `label`, `scores` (5 floats summing to 1), `referable` (grade >= 2), `mode`, `gradable`,
    `grade_set` (the contiguous conformal set of grades, e.g. `[2, 3]`, that holds the true grade with the target
    coverage; `None` for a model without conformal calibration), `ood_score` (float, or `None` without a feature
    bank) and, for an image that was not graded, `reason` (words) and `error_type` (the exception's class name, or
    `"LowQuality"`, `"OutOfDistribution"`, `"NonFiniteOutput"`); grade, label, scores, referable and grade_set are
    then `None`. With `top_k=n` each result
    also holds `top_k`: the `n` most likely grades as `[{"label", "score"}]`, highest score first (the
    image-classification pipeline's format).

    Args:
        feature_bank (`FeatureBank`, `str` or `None`):
            The bank for `mode="knn"`. By default, the model folder's (or Hub repo's) `feature_bank.safetensors`
            is used if present; if the folder or repo revision has none, the pipeline logs one warning naming it
            and grades with `mode="ordinal"`; if it cannot tell (no connection, not in the offline cache) it
            raises. Pass `False` to use no bank (and no warning).
        backend (`"torch"` or `"onnx"`, defaults to `"torch"`):
            `"onnx"` runs the ONNX Runtime export saved beside the weights (`retinascan export-onnx`) instead of
            the torch forward; preprocessing and decisions are the same code. Needs `retinascan-hf[onnx]`.
        onnx_variant (`"int8"` or `"fp32"`, defaults to `"int8"`), onnx_threads (`int`, *optional*):
            Which ONNX graph to run, and ONNX Runtime's thread count (default: `torch.get_num_threads()`).
        mode, k, return_neighbors, top_k, coverage, return_heatmap, heatmap_grade, timeout: call-time options (see
            `__call__`).
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False
    # Left unset, `pipeline()` tries to load a video processor, infers one from the image processor's `auto_map` and
    # asks on a terminal whether to run that (non-existent) remote code.
    _load_video_processor = False

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
            bank = self._default_bank()
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

    def _default_bank(self) -> FeatureBank | None:
        """The bank beside the weights: same repo, revision and cache (see `RetinaScanModel.from_pretrained`).

        Without one the default mode changes from `knn` to `ordinal`: that is said once, here, naming where the
        bank was looked for. A bank whose presence cannot be checked raises (see `FeatureBank.from_pretrained`).
        """
        source = getattr(self.model, "pretrained_source", None)
        if not source:
            logger.warning(
                "This model was not loaded from a folder or repo, so it has no feature bank: grading with "
                "mode='ordinal'. Pass feature_bank=<FeatureBank or path> for the kNN vote, or feature_bank=False."
            )
            return None
        bank = FeatureBank.from_pretrained(**source, missing_ok=True)
        if bank is None:
            location = bank_location(source["pretrained_model_name_or_path"], source["revision"], source["subfolder"])
            logger.warning(
                f"{location} has no {FEATURE_BANK_NAME}: grading with mode='ordinal' instead of the kNN vote. "
                "Pass feature_bank=False to choose this explicitly."
            )
        return bank

    def _sanitize_parameters(
        self,
        mode=None,
        k=None,
        return_neighbors=None,
        top_k=None,
        coverage=None,
        timeout=None,
        return_heatmap=None,
        heatmap_grade=None,
        **kwargs,
    ):
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
        if return_heatmap is not None or heatmap_grade is not None:
            forward_params.update(self._heatmap_options(return_heatmap, heatmap_grade))
            postprocess_params["return_heatmap"] = forward_params["return_heatmap"]
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
            postprocess_params["top_k"] = min(top_k, self.model.config.num_labels)
        if coverage is not None:
            forward_params["coverage"] = self._check_coverage(coverage)
        return preprocess_params, forward_params, postprocess_params

    def _check_coverage(self, coverage) -> float:
        """A call-time coverage for the grade sets: a number in (0, 1), on a model calibrated for them."""
        if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage < 1:
            raise ValueError(f"coverage must be a number strictly between 0 and 1, got {coverage!r}.")
        if not self.model.config.conformal_scores:
            raise ValueError("coverage was given, but this model has no conformal calibration (no grade sets).")
        return float(coverage)

    def _heatmap_options(self, return_heatmap: bool | None, heatmap_grade: int | None) -> dict[str, Any]:
        if return_heatmap and self.backend == "onnx":
            raise ValueError("return_heatmap (Grad-CAM) needs gradients of the torch model: use backend='torch'.")
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

        Options: `mode`, `k`, `return_neighbors`, `top_k`, `coverage` (target coverage of the `grade_set`, default
        the config's `conformal_coverage`), `timeout`, `batch_size`, and `return_heatmap=True`, which adds to each
        gradable result `heatmap` (float32 array `[S, S]` in [0, 1], Grad-CAM of the decided grade, or of
        `heatmap_grade` when given, aligned with `image_processor.to_model_image(input)`) and `overlay` (that
        cropped fundus as a PIL image with the heat map blended in). An empty list gives an empty list.
        """
        if isinstance(inputs, (list, tuple)) and not inputs:
            self._sanitize_parameters(**kwargs)  # bad options still raise
            return []
        with _torch_threads(1) if self.backend == "onnx" else contextlib.nullcontext():
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
            logger.warning("mode='knn' needs a feature bank and this pipeline has none; using mode='ordinal'.")
            return "ordinal"
        return mode

    def _forward(
        self,
        model_inputs: dict[str, Any],
        mode: str | None = None,
        k: int | None = None,
        coverage: float | None = None,
        return_heatmap: bool = False,
        heatmap_grade: int | None = None,
    ) -> dict[str, Any]:
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
        grade_set_bounds = torch.full((batch, 2), -1, dtype=torch.long)  # -1: no grade set
        extra = {}
        if valid.any():
            rows = torch.nonzero(valid).flatten()
            # A boolean-mask copy of the pixels costs ~4 ms per 224-px image with 2 torch threads (aten::index,
            # profiled): skip it when every item is valid, the usual case.
            selected = pixel_values if bool(valid.all()) else pixel_values[valid.to(pixel_values.device)]
            inputs = selected.to(self.model.dtype)
            if return_heatmap:
                decision, outputs, extra = self._explain(inputs, valid, mode, k, coverage, heatmap_grade)
            else:
                outputs = self.model(pixel_values=inputs)
                decision = decide(outputs, mode, config, bank, k, coverage=coverage)
            scores[rows], grades[rows] = decision.scores.float().cpu(), decision.grades.cpu()
            if decision.grade_sets is not None:
                grade_set_bounds[rows] = decision.grade_sets.cpu()
            neighbors = decision.neighbors
            if neighbors is not None:
                width = neighbors.indices.shape[1]
                neighbor_idx[rows, :width] = neighbors.indices.cpu()
                neighbor_sim[rows, :width] = neighbors.similarities.float().cpu()
            ood = bank.ood_scores(outputs.image_features.float()) if bank is not None else None
            if ood is not None:
                ood_scores[rows] = ood.float().cpu()
            finite = torch.isfinite(outputs.embeddings.float()).all(dim=-1).cpu() & torch.isfinite(scores[rows]).all(-1)
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
            "grade_set_bounds": grade_set_bounds,
            "mode": [mode] * batch,
            "reason": reasons,
            "error_type": error_types,
            **extra,
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

    def _explain(
        self,
        inputs: torch.Tensor,
        valid: torch.Tensor,
        mode: str,
        k: int,
        coverage: float | None,
        heatmap_grade: int | None,
    ) -> tuple[GradeDecision, RetinaScanOutput, dict[str, torch.Tensor]]:
        """Decision, model outputs and Grad-CAM maps from one forward pass; maps (and the pixels they overlay) for
        every row."""
        from .gradcam_retinascan import grad_cam

        explanation = grad_cam(
            self.model, inputs, mode, self.feature_bank, k, target_grade=heatmap_grade, coverage=coverage
        )
        size = inputs.shape[-1]
        heatmaps = torch.zeros(valid.shape[0], size, size)
        heatmaps[valid] = explanation.heatmaps.float().cpu()
        pixels = torch.zeros(valid.shape[0], 3, size, size)
        pixels[valid] = inputs.float().cpu()
        return explanation.decision, explanation.outputs, {"heatmap": heatmaps, "heatmap_pixels": pixels}

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        return_neighbors: bool = False,
        top_k: int | None = None,
        return_heatmap: bool = False,
    ) -> dict[str, Any]:
        result = self._describe(model_outputs, return_neighbors)
        if top_k is not None:
            result["top_k"] = self._ranked(result["scores"], top_k)
        if return_heatmap and result["gradable"]:
            result.update(self._heatmap_fields(model_outputs))
        return result

    def _ranked(self, scores: list[float] | None, top_k: int) -> list[dict[str, Any]] | None:
        """The `top_k` grades as `[{"label", "score"}]`, highest first; `None` for an ungraded item."""
        if scores is None:
            return None
        ranked = sorted(enumerate(scores), key=lambda item: item[1], reverse=True)[:top_k]
        return [{"label": self.model.config.id2label[grade], "score": score} for grade, score in ranked]

    def _describe(self, model_outputs: dict[str, Any], return_neighbors: bool) -> dict[str, Any]:
        ood_score = float(model_outputs["ood_score"].reshape(-1)[0])
        result = {
            "grade": None,
            "label": None,
            "scores": None,
            "referable": None,
            "mode": _first(model_outputs["mode"]),
            "gradable": bool(model_outputs["valid"].reshape(-1)[0]),
            "grade_set": None,
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
        result["grade_set"] = _grade_set(model_outputs["grade_set_bounds"].reshape(-1).tolist())
        if return_neighbors and result["mode"] == "knn":
            result["neighbors"] = self._describe_neighbors(
                model_outputs["neighbor_indices"].reshape(-1),
                model_outputs["neighbor_similarities"].reshape(-1),
            )
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


def register_pipeline_task(replace: bool = True) -> None:
    """Make `pipeline("retinascan")` this module's [`RetinaScanPipeline`] (with `AutoModel` for model ids).

    The installed package calls this from `register()` (`replace=True`: its classes win). A model loaded through
    remote code calls it with `replace=False` (see `RetinaScanModel.__init__`), so that `pipeline("retinascan",
    model=<that model object>, image_processor=...)` works in a process that never imported `retinascan_hf`,
    without displacing a pipeline already registered.
    """
    registered = PIPELINE_REGISTRY.supported_tasks.get(PIPELINE_TASK)
    if registered is not None and (registered["impl"] is RetinaScanPipeline or not replace):
        return
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=RetinaScanPipeline, pt_model=AutoModel, type="image"
    )


__all__ = ["RetinaScanPipeline", "register_pipeline_task"]
