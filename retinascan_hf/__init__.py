"""retinascan_hf: diabetic retinopathy grading (ICDR 0-4) from fundus photographs, native to transformers.

Importing the package is cheap: the public names below load their modules on first use (PEP 562), so
`retinascan --help` and `import retinascan_hf.x` never pay for torch and transformers unless they use them.
It still registers the `retinascan` model type with the Auto classes (`AutoModel` and
`AutoModelForImageClassification` included) and the `"retinascan"` pipeline task
(and marks the classes for `register_for_auto_class`, so every `save_pretrained` writes a folder that loads
with `trust_remote_code=True` where this package is not installed): immediately when transformers' Auto
classes are already imported, otherwise the moment they are (`import_hook` says how and why). Either way,
`import retinascan_hf` followed by `AutoModel.from_pretrained(DIR)` or `pipeline("retinascan", model=DIR)` works.
"""

from typing import TYPE_CHECKING

from .import_hook import register_with_transformers
from .lazy import lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    "ICDR_LABELS": "configuration_retinascan",
    "RetinaScanConfig": "configuration_retinascan",
    "FEATURE_BANK_NAME": "feature_bank",
    "FeatureBank": "feature_bank",
    "FeatureBankMismatchError": "feature_bank",
    "FeatureBankUnavailableError": "feature_bank",
    "ImageDownloadError": "image_processing_retinascan",
    "ImageTooLargeError": "image_processing_retinascan",
    "InvalidImageError": "image_processing_retinascan",
    "NoFundusFoundError": "image_processing_retinascan",
    "RetinaScanImageProcessor": "image_processing_retinascan",
    "RetinaScanInputError": "image_processing_retinascan",
    "load_pipeline": "loading",
    "compute_grading_metrics": "metrics",
    "metric_path": "metrics",
    "RetinaScanModel": "modeling_retinascan",
    "RetinaScanOutput": "modeling_retinascan",
    "RetinaScanPipeline": "pipeline_retinascan",
    "register": "registration",
    "InvalidArtefactError": "validation_retinascan",
}
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static analysers and IDEs see; at run time `__getattr__` resolves these names
    from .configuration_retinascan import ICDR_LABELS, RetinaScanConfig
    from .feature_bank import FEATURE_BANK_NAME, FeatureBank, FeatureBankMismatchError, FeatureBankUnavailableError
    from .image_processing_retinascan import (
        ImageDownloadError,
        ImageTooLargeError,
        InvalidImageError,
        NoFundusFoundError,
        RetinaScanImageProcessor,
        RetinaScanInputError,
    )
    from .loading import load_pipeline
    from .metrics import compute_grading_metrics, metric_path
    from .modeling_retinascan import RetinaScanModel, RetinaScanOutput
    from .pipeline_retinascan import RetinaScanPipeline
    from .registration import register
    from .validation_retinascan import InvalidArtefactError

register_with_transformers()

__all__ = [
    "FEATURE_BANK_NAME",
    "ICDR_LABELS",
    "FeatureBank",
    "FeatureBankMismatchError",
    "FeatureBankUnavailableError",
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
    "compute_grading_metrics",
    "load_pipeline",
    "metric_path",
    "register",
]
