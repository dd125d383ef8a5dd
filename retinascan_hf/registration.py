"""Registration of RetinaScan with transformers' Auto classes and pipeline registry.

After `register()`, `AutoConfig`/`AutoModel`/`AutoImageProcessor` resolve `model_type="retinascan"` to the
installed classes, `pipeline("retinascan")` is a known task, and every `save_pretrained` writes `auto_map`
entries, so that a saved folder also loads with `trust_remote_code=True` in a process that never imports this
package (the Hub's remote-code path). Calling it twice is harmless.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_retinascan import RetinaScanConfig
from .image_processing_retinascan import RetinaScanImageProcessor
from .modeling_retinascan import RetinaScanModel
from .pipeline_retinascan import RetinaScanPipeline


def register() -> None:
    """Register the installed RetinaScan classes with transformers (idempotent)."""
    AutoConfig.register(RetinaScanConfig.model_type, RetinaScanConfig, exist_ok=True)
    AutoModel.register(RetinaScanConfig, RetinaScanModel, exist_ok=True)
    AutoImageProcessor.register(RetinaScanConfig, slow_image_processor_class=RetinaScanImageProcessor, exist_ok=True)
    RetinaScanConfig.register_for_auto_class()
    RetinaScanModel.register_for_auto_class("AutoModel")
    RetinaScanImageProcessor.register_for_auto_class("AutoImageProcessor")
    PIPELINE_REGISTRY.register_pipeline(
        "retinascan", pipeline_class=RetinaScanPipeline, pt_model=AutoModel, type="image"
    )


__all__ = ["register"]
