"""Load a complete model folder (weights, processor, bank) into a pipeline with this package's classes.

With the package imported, `pipeline("retinascan", model=...)` already uses the installed classes (no
`trust_remote_code`); this shortcut builds the same pipeline explicitly, at one revision for all three artefacts.
"""

from __future__ import annotations

import os

from .image_processing_retinascan import RetinaScanImageProcessor
from .modeling_retinascan import RetinaScanModel
from .pipeline_retinascan import RetinaScanPipeline


def load_pipeline(
    model_name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: int | str | None = None,
    use_feature_bank: bool = True,
    **pipeline_kwargs,
) -> RetinaScanPipeline:
    """A [`RetinaScanPipeline`] for a model folder or Hub repo id.

    Its bank is found as `pipeline("retinascan")` finds it (same revision as the weights; a missing bank is logged,
    an unreachable one raises); `use_feature_bank=False` grades without one.
    """
    source = str(model_name_or_path)
    model = RetinaScanModel.from_pretrained(source, revision=revision)
    processor = RetinaScanImageProcessor.from_pretrained(source, revision=revision)
    return RetinaScanPipeline(
        model=model,
        image_processor=processor,
        feature_bank=None if use_feature_bank else False,
        device=device,
        **pipeline_kwargs,
    )
