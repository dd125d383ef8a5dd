"""The head-training fast path (issue 10, item 6) computes what the previous step computed: the loss-only forward,
the fused optimiser, `torch.compile` and direct indexing of cached features change speed, never the values
beyond float rounding. Timing is measured in `benchmarks/`, never here."""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate.utils import set_seed
from torch.utils._python_dispatch import TorchDispatchMode
from training_support import grade_structured_split, small_config

from retinascan_hf.tiny_clip import random_retinascan
from retinascan_hf.training import RetinaScanTrainer, make_accelerator
from retinascan_hf.training import trainer as trainer_module
from retinascan_hf.training.optim import adamw_implementation
from retinascan_hf.training.sampler import BalancedGradeSampler
from retinascan_hf.training.splits import CachedSplit, epoch_plan


def trained_weights(tmp_path, **overrides) -> torch.Tensor:
    """All trainable weights after a short seeded run (8 optimizer steps) of `small_config(**overrides)`."""
    set_seed(0)
    model, _ = random_retinascan()
    config = small_config(tmp_path, num_epochs=2, batches_per_epoch=4, log_with=[], **overrides)
    train, validation = grade_structured_split(8, 0, n_views=2), grade_structured_split(3, 1)
    trainer = RetinaScanTrainer(model, config, train, validation, make_accelerator(config))
    trainer.train()
    return torch.cat([parameter.detach().flatten() for parameter in trainer.trainable_parameters])


def test_loss_only_forward_gives_the_same_loss_and_gradients_as_the_full_forward():
    model, _ = random_retinascan()
    model.train()
    features, labels = torch.randn(20, 32), torch.arange(5).repeat(4)
    results = []
    for inference_outputs in (True, False):
        torch.manual_seed(3)  # the same dropout mask for both
        output = model(image_features=features, labels=labels, inference_outputs=inference_outputs)
        output.loss.backward()
        results.append(
            (output, [parameter.grad.clone() for parameter in model.parameters() if parameter.grad is not None])
        )
        model.zero_grad(set_to_none=True)
    (full, full_grads), (lean, lean_grads) = results
    assert torch.equal(full.loss, lean.loss) and len(full_grads) == len(lean_grads) == 6
    assert all(torch.equal(a, b) for a, b in zip(full_grads, lean_grads, strict=True))
    for name in ("ordinal_logits", "prototype_logits", "embeddings"):
        assert torch.equal(getattr(full, name), getattr(lean, name))
    assert lean.logits is None and lean.probs is None and lean.predicted_grade is None
    assert full.logits is not None and full.predicted_grade is not None  # the default keeps every output


def test_optimizer_implementation_choice_and_refusal(monkeypatch):
    cpu = torch.device("cpu")
    assert adamw_implementation(small_config("out"), cpu) == {"fused": True, "foreach": False}
    assert adamw_implementation(small_config("out", optimizer_implementation="foreach"), cpu)["foreach"]
    assert adamw_implementation(small_config("out", optimizer_implementation="for_loop"), cpu) == {
        "fused": False,
        "foreach": False,
    }
    with pytest.raises(ValueError, match="optimizer_implementation"):
        small_config("out", optimizer_implementation="sgd")
    monkeypatch.setattr("retinascan_hf.training.optim.fused_adamw_supported", lambda device: False)
    assert adamw_implementation(small_config("out"), cpu) == {"fused": False, "foreach": True}  # auto falls back
    with pytest.raises(ValueError, match="no fused AdamW"):
        adamw_implementation(small_config("out", optimizer_implementation="fused"), cpu)


def test_fast_path_weights_match_the_previous_optimizer_within_float_tolerance(tmp_path):
    fused = trained_weights(tmp_path / "fused")
    previous = trained_weights(tmp_path / "for_loop", optimizer_implementation="for_loop")
    foreach = trained_weights(tmp_path / "foreach", optimizer_implementation="foreach")
    assert not torch.equal(fused, trained_weights(tmp_path / "moved", learning_rate=2e-3))  # the check can fail
    torch.testing.assert_close(fused, previous, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(foreach, previous, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_stepping_the_plain_optimizer_equals_stepping_through_accelerate(tmp_path, monkeypatch, accumulation):
    direct = trained_weights(tmp_path / "direct", gradient_accumulation_steps=accumulation)
    monkeypatch.setattr(trainer_module, "plain_optimizer", lambda accelerator, prepared: None)
    wrapped = trained_weights(tmp_path / "wrapped", gradient_accumulation_steps=accumulation)
    assert torch.equal(direct, wrapped)  # the same operations in the same order: bit for bit


def test_the_plain_optimizer_is_used_only_where_accelerates_wrapper_adds_nothing(tmp_path):
    config = small_config(tmp_path, log_with=[])
    accelerator = make_accelerator(config)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    prepared = accelerator.prepare(optimizer)
    assert trainer_module.plain_optimizer(accelerator, prepared) is optimizer
    accelerator.scaler = torch.amp.GradScaler("cpu")  # fp16 loss scaling: the wrapper unscales and may skip steps
    assert trainer_module.plain_optimizer(accelerator, prepared) is None


@pytest.mark.slow
def test_compiled_training_matches_eager_within_float_tolerance(tmp_path, monkeypatch):
    if not trainer_module.compile_available():
        pytest.skip("torch.compile is unavailable here (the trainer falls back to eager: see the next test)")
    # Inductor draws dropout masks with its own generator unless told to use eager's: the same masks isolate the
    # arithmetic, which is what must agree.
    monkeypatch.setattr("torch._inductor.config.fallback_random", True)
    eager = trained_weights(tmp_path / "eager")
    compiled = trained_weights(tmp_path / "compiled", torch_compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_torch_compile_falls_back_to_eager_where_compiling_fails(tmp_path, monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    trainer_module.compile_available.cache_clear()
    monkeypatch.setattr(torch, "compile", broken_compile)
    try:
        with caplog.at_level(logging.WARNING):
            accelerator = make_accelerator(small_config(tmp_path, torch_compile=True, log_with=[]))
    finally:
        trainer_module.compile_available.cache_clear()
    assert accelerator.state.dynamo_plugin.backend.value == "NO"
    assert "no C++ compiler" in caplog.text and "training eagerly" in caplog.text


def test_cached_batches_index_the_feature_tensor_with_the_plan():
    split = grade_structured_split(6, 0, n_views=3)
    sampler = BalancedGradeSampler(split.grades.tolist(), n_per_class=2, num_batches=4, seed=0)
    plan = list(epoch_plan(sampler, epoch=1, seed=0, n_views=3, rank=0))
    batches = list(split.batches(iter(plan)))
    assert len(batches) == 4
    for batch, requests in zip(batches, plan, strict=True):
        rows, views = zip(*requests, strict=True)
        expected = torch.stack([split.features[row, view] for row, view in requests])
        assert torch.equal(batch["image_features"], expected)
        assert batch["labels"].tolist() == [int(split.grades[row]) for row in rows]
        assert batch["image_features"].dtype == torch.float32 and len(set(views)) > 1


def test_cached_split_yields_nothing_for_an_empty_plan():
    split = CachedSplit(torch.randn(3, 1, 4), torch.tensor([0, 1, 2]), ["a", "b", "c"], ["s"] * 3)
    assert list(split.batches(iter([]))) == []


class HostSyncCounter(TorchDispatchMode):
    """Counts device-to-host reads of a tensor's value (`.item()`, `float(t)`, `bool(t)`: `_local_scalar_dense`)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_training_steps_read_no_value_back_to_the_host(tmp_path, monkeypatch):
    """The loss stays on the device during an epoch and is read once per epoch (and per log interval): 20 steps
    read a constant handful of values, not one or more per step."""
    set_seed(0)
    model, _ = random_retinascan()
    config = small_config(tmp_path, num_epochs=2, batches_per_epoch=10, log_with=[], logging_steps=100)
    trainer = RetinaScanTrainer(
        model, config, grade_structured_split(8, 0, n_views=2), grade_structured_split(3, 1), make_accelerator(config)
    )
    monkeypatch.setattr(RetinaScanTrainer, "evaluate", lambda self: {"val/qwk": 0.5})  # validation reads values
    monkeypatch.setattr(RetinaScanTrainer, "_save_checkpoint", lambda self: None)
    with HostSyncCounter() as syncs:
        trainer.train()
    assert trainer.progress.global_step == 20
    # The epoch's summed loss and batch count, once per epoch (at least those: the counter sees reads).
    assert 2 <= syncs.count <= 2 * config.num_epochs
    losses = [entry["train/loss"] for entry in trainer.history]
    assert len(losses) == 2 and all(isinstance(loss, float) and loss > 0 for loss in losses)
