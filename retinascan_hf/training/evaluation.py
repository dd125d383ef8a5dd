"""Evaluate the heads on backbone features, in the three decision modes the pipeline offers.

Decisions come from the model's `decide`, the function the pipeline serves with (kNN vote over the feature
bank, calibrated CORAL thresholds, calibrated prototype softmax), so evaluation grades exactly as served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..feature_bank import FeatureBank
from ..modeling_retinascan import DECISION_MODES, RetinaScanModel, decide
from .metrics import grading_report


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


def evaluate_modes(
    model: RetinaScanModel,
    features: torch.Tensor,
    grades: torch.Tensor,
    bank: FeatureBank | None = None,
    batch_size: int = 1024,
) -> dict[str, dict[str, Any]]:
    """A `grading_report` per decision mode (kNN only when a bank is given)."""
    outputs = head_outputs(model, features, batch_size)
    modes = [mode for mode in DECISION_MODES if mode != "knn" or bank is not None]
    config = model.config
    return {
        mode: grading_report(
            grades.cpu().numpy(),
            decide(outputs, mode, config, bank).grades.numpy(),
            config.num_labels,
            referable_grade=config.referable_grade,
        )
        for mode in modes
    }


def format_evaluation(evaluation: dict[str, dict[str, Any]], baseline: dict[str, Any] | None = None) -> str:
    """A small table: QWK, accuracy and per-grade recall for each decision mode."""
    lines = [f"      {'mode':<10} {'QWK':>6} {'acc':>6}   recall per grade 0-4"]
    for mode, report in evaluation.items():
        recalls = " ".join(" -  " if row["recall"] is None else f"{row['recall']:.2f}" for row in report["per_grade"])
        lines.append(f"      {mode:<10} {report['qwk']:>6.3f} {report['accuracy']:>6.3f}   {recalls}")
    if baseline is not None:
        always = f"(always grade {baseline['grade']})"
        lines.append(f"      {'majority':<10} {baseline['qwk']:>6.3f} {baseline['accuracy']:>6.3f}   {always}")
    return "\n".join(lines)


__all__ = ["HeadOutputs", "evaluate_modes", "format_evaluation", "head_outputs"]
