"""BalancedGradeSampler: batch composition, determinism, epochs, distributed shards, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from retinascan_hf.training.sampler import BalancedGradeSampler

# DR-like imbalance: 300 / 40 / 60 / 8 / 3 examples of grades 0-4
GRADES = np.repeat(np.arange(5), [300, 40, 60, 8, 3]).tolist()


def batches(sampler: BalancedGradeSampler) -> list[list[int]]:
    return list(sampler)


@pytest.mark.parametrize("n_per_class", [1, 8])
def test_every_batch_holds_each_grade_exactly_n_per_class_times(n_per_class: int) -> None:
    sampler = BalancedGradeSampler(GRADES, n_per_class=n_per_class, seed=0)
    assert len(sampler) == len(GRADES) // (5 * n_per_class)
    produced = batches(sampler)
    assert len(produced) == len(sampler)
    for batch in produced:
        assert len(batch) == 5 * n_per_class
        assert Counter(GRADES[index] for index in batch) == dict.fromkeys(range(5), n_per_class)


def test_majority_class_is_drawn_without_replacement_minority_evenly_with() -> None:
    produced = np.concatenate(batches(BalancedGradeSampler(GRADES, num_batches=30, seed=0)))
    uses = Counter(produced.tolist())
    grade0 = [index for index in range(len(GRADES)) if GRADES[index] == 0]
    assert max(uses[index] for index in grade0) == 1  # 240 of 300 drawn, none twice
    grade4 = [index for index in range(len(GRADES)) if GRADES[index] == 4]
    assert sorted(uses[index] for index in grade4) == [80, 80, 80]  # 240 draws over 3 images


def test_same_seed_and_epoch_repeat_other_epoch_or_seed_differ() -> None:
    first = batches(BalancedGradeSampler(GRADES, seed=3))
    assert batches(BalancedGradeSampler(GRADES, seed=3)) == first
    assert batches(BalancedGradeSampler(GRADES, seed=4)) != first
    sampler = BalancedGradeSampler(GRADES, seed=3)
    sampler.set_epoch(1)
    assert batches(sampler) != first
    sampler.set_epoch(0)
    assert batches(sampler) == first


def test_replicas_get_distinct_batches_that_together_form_the_global_sequence() -> None:
    shards = [
        batches(BalancedGradeSampler(GRADES, num_batches=4, num_replicas=2, rank=rank, seed=1)) for rank in (0, 1)
    ]
    assert all(len(shard) == 4 for shard in shards)
    grade0 = {index for index in range(len(GRADES)) if GRADES[index] == 0}
    drawn0 = [{i for batch in shard for i in batch} & grade0 for shard in shards]
    assert not drawn0[0] & drawn0[1], "replicas share majority-class examples within an epoch"
    merged = BalancedGradeSampler(GRADES, num_batches=8, seed=1)
    assert [batch for pair in zip(*shards, strict=True) for batch in pair] == batches(merged)


def test_default_epoch_length_is_one_pass_across_replicas() -> None:
    assert len(BalancedGradeSampler(GRADES, num_replicas=2)) == len(GRADES) // (40 * 2)
    assert len(BalancedGradeSampler([0, 1, 2, 3, 4] * 6, n_per_class=8)) == 1  # never an empty epoch


def test_state_dict_round_trip_resumes_the_same_batches() -> None:
    sampler = BalancedGradeSampler(GRADES, seed=5)
    sampler.set_epoch(3)
    state = sampler.state_dict()
    assert state == {"seed": 5, "epoch": 3}
    resumed = BalancedGradeSampler(GRADES)
    resumed.load_state_dict(state)
    assert batches(resumed) == batches(sampler)


def test_drives_a_dataloader_as_batch_sampler() -> None:
    dataset = TensorDataset(torch.tensor(GRADES))
    loader = DataLoader(dataset, batch_sampler=BalancedGradeSampler(GRADES, n_per_class=2, num_batches=3))
    for (labels,) in loader:
        assert torch.bincount(labels, minlength=5).tolist() == [2] * 5


def test_a_class_without_examples_is_named() -> None:
    with pytest.raises(ValueError, match=r"class 3 \(Severe NPDR\) has no examples"):
        BalancedGradeSampler([0, 1, 2, 4])


@pytest.mark.parametrize(
    ("grades", "kwargs"),
    [
        ([0, 1, 7], {"num_classes": 3}),
        ([0, -1], {"num_classes": 2}),
        ([0, 1], {"num_classes": 2, "rank": 2, "num_replicas": 2}),
    ],
)
def test_invalid_arguments_are_rejected(grades: list[int], kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BalancedGradeSampler(grades, **kwargs)
