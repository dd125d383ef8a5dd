"""Load a complete model folder (weights, processor, bank) into a pipeline with this package's classes.

`pipeline("retinascan", model=..., trust_remote_code=True)` is the Hub user's path and runs the code
stored in the repo. Code that has `retinascan_hf` installed should not need to trust (or prompt for)
remote code: this loader builds the same pipeline from the installed classes, at one revision for all
three artefacts.
"""

from __future__ import annotations

import os

from .feature_bank import FeatureBank
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
    """A [`RetinaScanPipeline`] for a model folder or Hub repo id (its bank is used when present)."""
    source = str(model_name_or_path)
    model = RetinaScanModel.from_pretrained(source, revision=revision)
    processor = RetinaScanImageProcessor.from_pretrained(source, revision=revision)
    bank = FeatureBank.from_pretrained(source, revision=revision, missing_ok=True) if use_feature_bank else None
    return RetinaScanPipeline(
        model=model,
        image_processor=processor,
        feature_bank=bank if bank is not None else False,
        device=device,
        **pipeline_kwargs,
    )
