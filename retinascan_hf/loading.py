"""Load a complete model folder (weights, processor, bank) into a pipeline with this package's classes.

With the package imported, `pipeline("retinascan", model=...)` already uses the installed classes (no
`trust_remote_code`); this shortcut builds the same pipeline explicitly, at one revision for all three artefacts.
With `backend="onnx"` it never loads the torch weights: only the config, the ONNX graph, the processor and the bank.
"""

from __future__ import annotations

import os

from .image_processing_retinascan import RetinaScanImageProcessor
from .modeling_retinascan import RetinaScanModel
from .onnx_backend import BACKENDS, RetinaScanOnnxModel
from .pipeline_retinascan import RetinaScanPipeline


def load_pipeline(
    model_name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: int | str | None = None,
    use_feature_bank: bool = True,
    backend: str = "torch",
    onnx_variant: str = "int8",
    onnx_threads: int | None = None,
    onnx_dir: str | os.PathLike | None = None,
    **pipeline_kwargs,
) -> RetinaScanPipeline:
    """A [`RetinaScanPipeline`] for a model folder or Hub repo id.

    Its bank is found as `pipeline("retinascan")` finds it (same revision as the weights; a missing bank is logged,
    an unreachable one raises); `use_feature_bank=False` grades without one. `backend="onnx"` runs the
    `onnx_variant` graph of `retinascan export-onnx` (from the folder's `onnx/`, or `onnx_dir`) with `onnx_threads`
    ONNX Runtime threads; `backend="torch"` (default) the torch model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    source = str(model_name_or_path)
    if backend == "onnx":
        model = RetinaScanOnnxModel.from_pretrained(
            source, variant=onnx_variant, num_threads=onnx_threads, onnx_dir=onnx_dir, revision=revision
        )
    else:
        model = RetinaScanModel.from_pretrained(source, revision=revision)
    processor = RetinaScanImageProcessor.from_pretrained(source, revision=revision)
    return RetinaScanPipeline(
        model=model,
        image_processor=processor,
        feature_bank=None if use_feature_bank else False,
        device=device,
        backend=backend,
        onnx_variant=onnx_variant,
        **pipeline_kwargs,
    )
