"""A class-balanced batch sampler for training on the (heavily grade-0) DR corpus."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from ..configuration_retinascan import ICDR_LABELS


class BalancedGradeSampler(Sampler[list[int]]):
    """Batches of ``n_per_class`` indices of every class, the same for a given ``(seed, epoch)``.

    DR corpora are mostly grade 0, and grades 3-4 can be a few percent; a plain shuffle gives
    batches with no severe case at all. Here every batch holds each class exactly ``n_per_class``
    times, in random order. Each class is drawn as whole reshuffled passes over its examples, so a
    majority class is sampled without replacement and a minority class is repeated (drawn with
    replacement) as evenly as possible.

    For distributed training, every replica generates the same ``num_batches * num_replicas``
    batches from the shared seed and keeps every ``num_replicas``-th one starting at ``rank``, so
    replicas see distinct batches without communicating. (With ``accelerate``'s ``prepare`` keep
    ``num_replicas=1``: it shards batch samplers the same way itself.)

    Args:
        grades: class index of every dataset row (e.g. ``corpus["train"]["grade"]``).
        n_per_class: examples of each class per batch; the batch size is ``n_per_class * num_classes``.
        num_classes: number of classes; every one must have at least one example.
        num_batches: batches per replica per epoch; by default about one pass over the data
            across all replicas, ``len(grades) // (batch_size * num_replicas)`` (at least 1).
        seed: shared by all replicas; with the epoch it fixes every batch.
        num_replicas: number of distributed processes.
        rank: this process's index in ``range(num_replicas)``.
    """

    def __init__(
        self,
        grades: Sequence[int],
        *,
        n_per_class: int = 8,
        num_classes: int = len(ICDR_LABELS),
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        labels = np.asarray(list(grades), dtype=np.int64)
        if n_per_class < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need n_per_class >= 1 and 0 <= rank < num_replicas; got {n_per_class}, {rank}, {num_replicas}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"grades must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}")
        self._pools = [np.flatnonzero(labels == label) for label in range(num_classes)]
        for label, pool in enumerate(self._pools):
            if pool.size == 0:
                raise ValueError(
                    f"class {_class_name(label, num_classes)} has no examples: a balanced batch needs every class"
                )
        self.n_per_class = n_per_class
        self.batch_size = n_per_class * num_classes
        self.num_batches = (
            num_batches if num_batches is not None else max(1, labels.size // (self.batch_size * num_replicas))
        )
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.num_batches * self.num_replicas
        columns = [_draw(pool, total * self.n_per_class, rng).reshape(total, self.n_per_class) for pool in self._pools]
        batches = rng.permuted(np.concatenate(columns, axis=1), axis=1)
        for batch in batches[self.rank :: self.num_replicas]:
            yield batch.tolist()

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs to reproduce the batch sequence: seed and epoch."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])


def _draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices from ``pool`` as consecutive independently shuffled passes over it."""
    passes = -(-count // pool.size)
    return rng.permuted(np.tile(pool, (passes, 1)), axis=1).ravel()[:count]


def _class_name(label: int, num_classes: int) -> str:
    return f"{label} ({ICDR_LABELS[label]})" if num_classes == len(ICDR_LABELS) else str(label)
