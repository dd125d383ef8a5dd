"""Training for RetinaScan: Accelerate loop, frozen-backbone feature cache, calibration, model export.

Metrics come from `retinascan_hf.metrics` (also the `evaluate` metric), never from code of their own.

`run_training(TrainingConfig(...))` is the whole job (`scripts/train.py` and `retinascan train` wrap it);
the modules below are its parts, each importable on its own.
"""

from .calibration import CalibrationResult, calibrate
from .config import TrainingConfig
from .conformal import ConformalResult, fit_conformal
from .feature_cache import CacheStats, FeatureCache, backbone_fingerprint
from .run import TrainingResult, run_training
from .splits import CachedSplit, ImageSplit
from .trainer import RetinaScanTrainer, make_accelerator

__all__ = [
    "CacheStats",
    "CachedSplit",
    "CalibrationResult",
    "ConformalResult",
    "FeatureCache",
    "ImageSplit",
    "RetinaScanTrainer",
    "TrainingConfig",
    "TrainingResult",
    "backbone_fingerprint",
    "calibrate",
    "fit_conformal",
    "make_accelerator",
    "run_training",
]
