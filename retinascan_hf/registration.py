"""Registration of RetinaScan with transformers' Auto classes and pipeline registry.

After `register()`, `AutoConfig`/`AutoModel`/`AutoModelForImageClassification`/`AutoImageProcessor` resolve
`model_type="retinascan"` to the installed classes and `pipeline("retinascan")` is the installed pipeline, also for
saved folders, without `trust_remote_code` (see `RetinaScanConfig.locally_registered_pipeline_tasks`). Every
`save_pretrained` still writes `auto_map` and `custom_pipelines`, so that a saved folder also loads with
`trust_remote_code=True` in a process that never imports this package (the Hub's remote-code path). Calling it
twice is harmless.
"""

from __future__ import annotations

import transformers
from transformers import AutoConfig, AutoImageProcessor

from .configuration_retinascan import PIPELINE_TASK, RetinaScanConfig
from .image_processing_retinascan import RetinaScanImageProcessor
from .modeling_retinascan import AUTO_MODEL_CLASSES, RetinaScanModel
from .pipeline_retinascan import register_pipeline_task


def register() -> None:
    """Register the installed RetinaScan classes with transformers (idempotent)."""
    AutoConfig.register(RetinaScanConfig.model_type, RetinaScanConfig, exist_ok=True)
    for auto_class in AUTO_MODEL_CLASSES:
        getattr(transformers, auto_class).register(RetinaScanConfig, RetinaScanModel, exist_ok=True)
    AutoImageProcessor.register(RetinaScanConfig, slow_image_processor_class=RetinaScanImageProcessor, exist_ok=True)
    RetinaScanConfig.register_for_auto_class()
    RetinaScanModel.register_for_auto_class(AUTO_MODEL_CLASSES[0])
    RetinaScanImageProcessor.register_for_auto_class("AutoImageProcessor")
    RetinaScanConfig.locally_registered_pipeline_tasks = frozenset({PIPELINE_TASK})
    register_pipeline_task()


__all__ = ["register"]
