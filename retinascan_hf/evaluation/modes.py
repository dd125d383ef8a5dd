"""Every way a RetinaScan model can grade, from one tensor of backbone features.

| mode                   | what decides                                                                  |
|------------------------|-------------------------------------------------------------------------------|
| `zero_shot`            | CLIP alone: raw image features against the text prototypes (no trained part)  |
| `prototype`            | trained projection, calibrated softmax over the text prototypes               |
| `ordinal_uncalibrated` | trained CORAL head, temperature 1 and zero thresholds                         |
| `ordinal`              | trained CORAL head with the calibrated temperature and tuned thresholds       |
| `knn`                  | distance-weighted vote of the nearest feature-bank rows                       |
| `ensemble`             | mean of the calibrated distributions of `prototype`, `ordinal` and `knn`;      |
|                        | grade = the most probable one                                                 |

The served modes (`prototype`, `ordinal`, `knn`) come from `decide`, the function the pipeline serves with,
so they carry the conformal grade sets and grade exactly as served.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..feature_bank import FeatureBank
from ..modeling_retinascan import GradeDecision, RetinaScanModel, decide, ordinal_grades, ordinal_probabilities
from ..training.evaluation import HeadOutputs, head_outputs

EVALUATION_MODES: tuple[str, ...] = ("zero_shot", "prototype", "ordinal_uncalibrated", "ordinal", "knn", "ensemble")
ENSEMBLE_MEMBERS: tuple[str, ...] = ("prototype", "ordinal", "knn")
MODE_DESCRIPTIONS: dict[str, str] = {
    "zero_shot": "CLIP zero-shot: raw image features vs text prototypes, no trained head",
    "prototype": "prototype head, calibrated temperature",
    "ordinal_uncalibrated": "CORAL ordinal head before calibration (T = 1, zero thresholds)",
    "ordinal": "CORAL ordinal head after calibration and threshold tuning",
    "knn": "kNN vote over the feature bank",
    "ensemble": "mean of the calibrated prototype, ordinal and kNN distributions (argmax)",
}


def zero_shot_decision(model: RetinaScanModel, features: torch.Tensor) -> GradeDecision:
    """CLIP's own zero-shot classifier: cosine of the image features to each grade's text embedding, scaled
    by CLIP's learnt logit scale, softmax."""
    image = F.normalize(features.float(), dim=-1)
    prototypes = F.normalize(model.text_prototypes.detach().float().cpu(), dim=-1)
    scale = model.clip.logit_scale.detach().float().exp().cpu()
    scores = F.softmax(scale * image @ prototypes.T, dim=-1)
    return GradeDecision(scores, scores.argmax(dim=-1))


def uncalibrated_ordinal_decision(outputs: HeadOutputs) -> GradeDecision:
    """The CORAL head as trained: temperature 1, zero thresholds."""
    logits = outputs.ordinal_logits
    zeros = torch.zeros(logits.shape[-1])
    return GradeDecision(ordinal_probabilities(logits), ordinal_grades(logits, 1.0, zeros))


def uncalibrated_prototype_scores(outputs: HeadOutputs) -> torch.Tensor:
    """The prototype softmax at the training temperature (what calibration starts from)."""
    return F.softmax(outputs.prototype_logits.float(), dim=-1)


def ensemble_decision(members: list[GradeDecision]) -> GradeDecision:
    """Mean of the members' grade distributions; its most probable grade (ties: the lower grade)."""
    scores = torch.stack([member.scores.float() for member in members]).mean(dim=0)
    return GradeDecision(scores, scores.argmax(dim=-1))


def all_decisions(
    model: RetinaScanModel,
    features: torch.Tensor,
    bank: FeatureBank | None,
    *,
    batch_size: int = 1024,
    coverage: float | None = None,
) -> tuple[dict[str, GradeDecision], HeadOutputs]:
    """The decision of every mode (kNN, and the ensemble's kNN member, only with a `bank`) and the head outputs
    they came from; grade sets at `coverage` (default: the config's)."""
    outputs = head_outputs(model, features, batch_size)
    config = model.config
    decisions = {
        "zero_shot": zero_shot_decision(model, features),
        "prototype": decide(outputs, "prototype", config, coverage=coverage),
        "ordinal_uncalibrated": uncalibrated_ordinal_decision(outputs),
        "ordinal": decide(outputs, "ordinal", config, coverage=coverage),
    }
    if bank is not None:
        decisions["knn"] = decide(outputs, "knn", config, bank, coverage=coverage)
    decisions["ensemble"] = ensemble_decision([decisions[mode] for mode in ENSEMBLE_MEMBERS if mode in decisions])
    return decisions, outputs


__all__ = [
    "ENSEMBLE_MEMBERS",
    "EVALUATION_MODES",
    "MODE_DESCRIPTIONS",
    "all_decisions",
    "ensemble_decision",
    "uncalibrated_ordinal_decision",
    "uncalibrated_prototype_scores",
    "zero_shot_decision",
]
