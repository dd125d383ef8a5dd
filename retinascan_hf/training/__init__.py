"""Training for RetinaScan: Accelerate loop, frozen-backbone feature cache, calibration, model export.

Metrics come from `retinascan_hf.metrics` (also the `evaluate` metric), never from code of their own.

`run_training(TrainingConfig(...))` is the whole job (`scripts/train.py` and `retinascan train` wrap it);
the modules below are its parts, each importable on its own. The names load lazily (see `retinascan_hf.lazy`),
so reading `TrainingConfig` for `retinascan train --help` does not import torch.
"""

from ..lazy import lazy_attributes

_EXPORTS = {
    "CalibrationResult": "calibration",
    "calibrate": "calibration",
    "TrainingConfig": "config",
    "ConformalResult": "conformal",
    "fit_conformal": "conformal",
    "CacheStats": "feature_cache",
    "FeatureCache": "feature_cache",
    "backbone_fingerprint": "feature_cache",
    "TrainingResult": "run",
    "run_training": "run",
    "CachedSplit": "splits",
    "ImageSplit": "splits",
    "RetinaScanTrainer": "trainer",
    "make_accelerator": "trainer",
}
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
