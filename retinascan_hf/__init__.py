"""retinascan_hf: diabetic retinopathy grading (ICDR 0-4) from fundus photographs, native to transformers.

Importing the package registers the `retinascan` model type with the Auto classes and the
`"retinascan"` pipeline task, and marks the classes for `register_for_auto_class`, so that every
`save_pretrained` writes a folder that loads with `trust_remote_code=True` in a process that never
imports this package (the Hub's remote-code path).
"""

from .configuration_retinascan import ICDR_LABELS, RetinaScanConfig
from .feature_bank import FEATURE_BANK_NAME, FeatureBank, FeatureBankMismatchError
from .image_processing_retinascan import (
    ImageDownloadError,
    ImageTooLargeError,
    InvalidImageError,
    NoFundusFoundError,
    RetinaScanImageProcessor,
    RetinaScanInputError,
)
from .loading import load_pipeline
from .modeling_retinascan import RetinaScanModel, RetinaScanOutput
from .pipeline_retinascan import RetinaScanPipeline
from .registration import register
from .validation_retinascan import InvalidArtefactError

__version__ = "0.1.0"

register()

__all__ = [
    "FEATURE_BANK_NAME",
    "ICDR_LABELS",
    "FeatureBank",
    "FeatureBankMismatchError",
    "ImageDownloadError",
    "ImageTooLargeError",
    "InvalidArtefactError",
    "InvalidImageError",
    "NoFundusFoundError",
    "RetinaScanConfig",
    "RetinaScanImageProcessor",
    "RetinaScanInputError",
    "RetinaScanModel",
    "RetinaScanOutput",
    "RetinaScanPipeline",
    "__version__",
    "load_pipeline",
]
