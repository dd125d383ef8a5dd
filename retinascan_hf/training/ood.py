"""The embedding-space OOD threshold, fitted at training time: a high quantile of validation images' scores.

`FeatureBank.ood_scores` puts every image on the scale of the bank's OOD reference (about 1 for an image as
close to the training images as they are to each other). Validation images are new draws from the training distribution,
so the `quantile` of their scores is a threshold that flags about `1 - quantile` of in-distribution images
(the price of the check) and, far above it, pictures unlike anything the model was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..feature_bank import FeatureBank
from ..modeling_retinascan import RetinaScanModel

# Never flag an image that is as close to the bank as the bank's own rows are to each other.
MIN_OOD_THRESHOLD = 1.0


@dataclass
class OODCalibration:
    """The fitted threshold and the validation scores it came from."""

    threshold: float
    quantile: float
    validation_median: float
    validation_flagged_fraction: float

    def apply(self, model: RetinaScanModel) -> None:
        """Write the threshold into the model config (what `save_pretrained` then stores)."""
        model.config.ood_threshold = self.threshold

    def to_dict(self) -> dict:
        return asdict(self)


def fit_ood_threshold(bank: FeatureBank, features: torch.Tensor, quantile: float) -> OODCalibration | None:
    """The `quantile` of the OOD scores of validation backbone `features` `[N, D]` (at least `MIN_OOD_THRESHOLD`);
    `None` when there is nothing to fit on (no validation images, or a bank without an OOD reference)."""
    scores = bank.ood_scores(features.float()) if len(features) else None
    if scores is None:
        return None
    threshold = max(float(torch.quantile(scores.float().cpu(), quantile)), MIN_OOD_THRESHOLD)
    return OODCalibration(
        threshold=threshold,
        quantile=quantile,
        validation_median=float(scores.median()),
        validation_flagged_fraction=flagged_fraction(bank, features, threshold),
    )


def flagged_fraction(bank: FeatureBank, features: torch.Tensor, threshold: float) -> float:
    """Fraction of backbone `features` whose OOD score exceeds `threshold` (what the pipeline would not grade)."""
    scores = bank.ood_scores(features.float())
    return float((scores > threshold).float().mean()) if scores is not None and len(scores) else 0.0


__all__ = ["MIN_OOD_THRESHOLD", "OODCalibration", "fit_ood_threshold", "flagged_fraction"]
