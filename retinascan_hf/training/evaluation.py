"""Evaluate the heads on backbone features, in the three decision modes the pipeline offers.

Decisions come from the model's `decide`, the function the pipeline serves with (kNN vote over the feature
bank, calibrated CORAL thresholds, calibrated prototype softmax, conformal grade sets), so evaluation grades
exactly as served; numbers come from `retinascan_hf.metrics`, the same code as the `evaluate` metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..configuration_retinascan import RetinaScanConfig
from ..feature_bank import FeatureBank
from ..metrics import compute_grading_metrics, grade_set_metrics
from ..modeling_retinascan import DECISION_MODES, GradeDecision, RetinaScanModel, decide

VISION_THREATENING_GRADE = 3  # ICDR severe NPDR or worse


@dataclass
class HeadOutputs:
    """Head outputs for a whole split, on CPU: the fields of `RetinaScanOutput` that evaluation reads, and the
    mean loss when labels were given."""

    ordinal_logits: torch.Tensor
    prototype_logits: torch.Tensor
    probs: torch.Tensor
    embeddings: torch.Tensor
    predicted_grade: torch.Tensor
    loss: float | None = None


_TENSOR_FIELDS = ("ordinal_logits", "prototype_logits", "probs", "embeddings", "predicted_grade")


@torch.no_grad()
def head_outputs(
    model: RetinaScanModel, features: torch.Tensor, batch_size: int = 1024, labels: torch.Tensor | None = None
) -> HeadOutputs:
    """`model.forward_head` over `features` `[N, D]` in eval mode (no dropout), chunked; mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.projection.parameters()).device
    label_chunks = labels.split(batch_size) if labels is not None else [None] * len(features.split(batch_size))
    chunks = [
        model.forward_head(chunk.to(device), None if target is None else target.to(device))
        for chunk, target in zip(features.split(batch_size), label_chunks, strict=True)
    ]
    model.train(was_training)
    loss = None
    if labels is not None:
        loss = sum(float(chunk.loss) * len(chunk.probs) for chunk in chunks) / len(features)
    tensors = {name: torch.cat([_to_cpu(getattr(chunk, name)) for chunk in chunks]) for name in _TENSOR_FIELDS}
    return HeadOutputs(**tensors, loss=loss)


def _to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float().cpu() if tensor.is_floating_point() else tensor.cpu()


def decision_metrics(
    decision: GradeDecision,
    references: Any,
    config: RetinaScanConfig,
    *,
    patient_ids: Any | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Every grading metric of one decision (with bootstrap intervals when `n_bootstrap` > 0), and the empirical
    coverage and size of its grade sets when it has them (`grade_sets`, with the target `coverage`)."""
    num_labels = config.num_labels
    metrics = compute_grading_metrics(
        references,
        decision.grades.cpu().numpy(),
        decision.scores.double().cpu().numpy(),
        patient_ids,
        num_labels=num_labels,
        referable_grade=config.referable_grade,
        vision_threatening_grade=min(VISION_THREATENING_GRADE, num_labels - 1),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    if decision.grade_sets is not None:
        metrics["grade_sets"] = grade_set_metrics(decision.grade_sets.cpu().numpy(), references, num_labels)
    return metrics


def evaluate_modes(
    model: RetinaScanModel,
    features: torch.Tensor,
    grades: torch.Tensor,
    bank: FeatureBank | None = None,
    batch_size: int = 1024,
    coverage: float | None = None,
) -> dict[str, dict[str, Any]]:
    """[`decision_metrics`] per decision mode (kNN only when a bank is given), point estimates only; grade sets
    at `coverage` (default: the config's)."""
    outputs = head_outputs(model, features, batch_size)
    modes = [mode for mode in DECISION_MODES if mode != "knn" or bank is not None]
    config = model.config
    references = grades.cpu().numpy()
    return {
        mode: decision_metrics(decide(outputs, mode, config, bank, coverage=coverage), references, config)
        for mode in modes
    }


def format_evaluation(evaluation: dict[str, dict[str, Any]], baseline: dict[str, Any] | None = None) -> str:
    """A small table: QWK, accuracy and per-grade recall for each decision mode."""
    lines = [f"      {'mode':<10} {'QWK':>6} {'acc':>6}   recall per grade 0-4"]
    for mode, report in evaluation.items():
        recalls = " ".join(" -  " if row["recall"] is None else f"{row['recall']:.2f}" for row in report["per_grade"])
        qwk = "   n/a" if report["qwk"] is None else f"{report['qwk']:>6.3f}"
        lines.append(f"      {mode:<10} {qwk} {report['accuracy']:>6.3f}   {recalls}")
    if baseline is not None:
        always = f"(always grade {baseline['grade']})"
        lines.append(f"      {'majority':<10} {baseline['qwk']:>6.3f} {baseline['accuracy']:>6.3f}   {always}")
    return "\n".join(lines)


__all__ = [
    "VISION_THREATENING_GRADE",
    "HeadOutputs",
    "decision_metrics",
    "evaluate_modes",
    "format_evaluation",
    "head_outputs",
]
