"""Training for RetinaScan: Accelerate loop, frozen-backbone feature cache, calibration, model export.

`run_training(TrainingConfig(...))` is the whole job (`scripts/train.py` and `retinascan train` wrap it);
the modules below are its parts, each importable on its own.
"""

from .calibration import CalibrationResult, calibrate
from .config import TrainingConfig
from .feature_cache import CacheStats, FeatureCache, backbone_fingerprint
from .metrics import expected_calibration_error, grading_report, quadratic_weighted_kappa
from .run import TrainingResult, run_training
from .splits import CachedSplit, ImageSplit
from .trainer import RetinaScanTrainer, make_accelerator

__all__ = [
    "CacheStats",
    "CachedSplit",
    "CalibrationResult",
    "FeatureCache",
    "ImageSplit",
    "RetinaScanTrainer",
    "TrainingConfig",
    "TrainingResult",
    "backbone_fingerprint",
    "calibrate",
    "expected_calibration_error",
    "grading_report",
    "make_accelerator",
    "quadratic_weighted_kappa",
    "run_training",
]
