"""The int8-vs-fp32 parity protocol's pieces (`benchmarks/onnx_parity.py`): the split keeps patients together,
and the trained-heads comparison trains on the bank half only and compares each variant through the same heads.
The full protocol runs real photographs through real-size graphs (`scripts/onnx_parity.py`), never here."""

from __future__ import annotations

import pytest
import torch

from benchmarks.onnx_parity import _patient, compare_trained_heads, split_by_patient, train_heads
from retinascan_hf.tiny_clip import random_retinascan


def _rows(patients: int) -> list[tuple[str, int]]:
    return [(f"/data/train/{p}_{eye}.jpeg", p % 5) for p in range(patients) for eye in ("left", "right")]


def test_split_by_patient_keeps_both_eyes_together_and_covers_every_row():
    bank, graded = split_by_patient(_rows(40), seed=0)
    assert {_patient(path) for path, _ in bank}.isdisjoint({_patient(path) for path, _ in graded})
    assert sorted(bank + graded) == sorted(_rows(40)) and len(bank) == len(graded) == 40


def _outputs(features: torch.Tensor, noise: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"image_features": features + noise * torch.randn(features.shape, generator=generator)}


def test_trained_heads_comparison_trains_on_the_bank_half_and_judges_each_variant(tmp_path):
    model, _ = random_retinascan()
    model.save_pretrained(tmp_path / "model")
    dim, generator = model.config.embedding_dim, torch.Generator().manual_seed(0)
    bank_grades = torch.arange(5).repeat(12)
    bank_features = torch.randn(60, dim, generator=generator) + bank_grades[:, None] * 0.5
    graded_features = torch.randn(40, dim, generator=generator) + torch.arange(5).repeat(8)[:, None] * 0.5
    bank_patients = [f"p{i // 2}" for i in range(60)]
    bank_out = {"fp32": {"image_features": bank_features}, "same": {"image_features": bank_features.clone()}}
    graded_out = {"fp32": {"image_features": graded_features}, "same": {"image_features": graded_features.clone()}}
    bank_out["noisy"], graded_out["noisy"] = _outputs(bank_features, 3.0, 1), _outputs(graded_features, 3.0, 2)

    result = compare_trained_heads(tmp_path / "model", bank_out, graded_out, bank_grades, bank_patients, tmp_path)

    training = result["training"]
    assert training["train_images"] + training["validation_images"] == 60 and training["validation_images"] > 0
    assert training["epochs"] == 50
    same, noisy = result["comparisons"]["same_vs_fp32"], result["comparisons"]["noisy_vs_fp32"]
    assert set(result["comparisons"]) == {"same_vs_fp32", "noisy_vs_fp32"}
    for mode in ("ordinal", "prototype", "knn", "knn_own_bank"):
        assert same[mode]["agreement"] == 1.0 and same[mode]["disagreements"] == 0
    assert min(noisy[mode]["agreement"] for mode in ("ordinal", "prototype", "knn")) < 1.0  # the check can fail
    assert (
        noisy["image_features_error_over_between_image_spread"] > same["image_features_error_over_between_image_spread"]
    )


def test_train_heads_holds_out_whole_patients(tmp_path):
    model, _ = random_retinascan()
    dim = model.config.embedding_dim
    features, grades = torch.randn(30, dim), torch.arange(5).repeat(6)
    patients = [f"p{i // 2}" for i in range(30)]
    before = model.projection.fc1.weight.detach().clone()
    training = train_heads(model, features, grades, patients, tmp_path / "heads")
    assert training["train_images"] + training["validation_images"] == 30
    assert training["validation_images"] % 2 == 0  # both eyes of a held-out patient
    assert not torch.equal(before, model.projection.fc1.weight)  # trained in place


def test_train_heads_refuses_a_bank_of_one_patient(tmp_path):
    model, _ = random_retinascan()
    with pytest.raises(ValueError, match="at least 2 patients"):
        train_heads(model, torch.randn(4, model.config.embedding_dim), torch.arange(4), ["p0"] * 4, tmp_path)
