"""What the trainer trains on: cached backbone features (frozen backbone) or images (end-to-end).

Both kinds of split answer the same two questions: "give me the batches of this epoch's plan" and "give me
the un-augmented features of every row under the current model" (for validation, calibration and the
feature bank), so the training loop and everything after it are the same code for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import Sampler

from ..modeling_retinascan import RetinaScanModel
from .data import FundusViews, ViewRequest, compute_features, view_loader
from .feature_cache import STATISTICS_BLOCK_ROWS, CachedFeatures, streamed_moments

# One batch of an epoch's plan: `(row, view)` per example.
BatchPlan = list[tuple[int, int]]


def epoch_plan(
    sampler: Sampler[list[int]], *, epoch: int, seed: int, n_views: int, rank: int, start: int = 0
) -> Iterator[BatchPlan]:
    """The batches of `epoch` from `start` on, each row paired with the view it is trained on this time.

    Views are drawn for the whole epoch at once from `(seed, epoch, rank)` alone (one generator per epoch, not one
    per step), so skipping the first `start` batches (resuming mid-epoch) reproduces exactly the batches an
    uninterrupted run would have seen.
    """
    sampler.set_epoch(epoch)
    draws = np.random.default_rng([seed, epoch, rank])
    views: list[list[int]] = []
    for batch, rows in enumerate(sampler):
        if not views:  # the epoch's views, drawn once the batch size is known
            views = draws.integers(n_views, size=(len(sampler), len(rows))).tolist()
        if batch >= start:
            yield list(zip(rows, views[batch], strict=True))


# Cached features up to this size (as float32) are read into memory once: the same values as the memory-mapped
# reads, and faster batches. Larger caches stay memory-mapped, so head training runs in bounded memory.
IN_MEMORY_LIMIT_BYTES = 1 << 30


@dataclass
class CachedSplit:
    """A split as cached backbone features.

    Attributes:
        features: `[N, V, D]`, in memory (a tensor) or memory-mapped from the feature cache
            ([`CachedFeatures`]); view 0 is the un-augmented picture.
        grades: `[N]` ICDR grades.
        image_ids, sources: per row, for the feature bank's audit trail.
    """

    features: torch.Tensor | CachedFeatures
    grades: torch.Tensor
    image_ids: list[str]
    sources: list[str]

    @classmethod
    def from_cache(
        cls, features: CachedFeatures, grades: torch.Tensor, image_ids: list[str], sources: list[str]
    ) -> CachedSplit:
        """Keep `features` memory-mapped when larger than `IN_MEMORY_LIMIT_BYTES`, else read them in."""
        rows = features.load() if features.nbytes <= IN_MEMORY_LIMIT_BYTES else features
        return cls(rows, grades, image_ids, sources)

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device) -> CachedSplit:
        """Move in-memory features once, instead of copying every batch to the device (memory-mapped features
        are read, and moved, per batch)."""
        if isinstance(self.features, torch.Tensor):
            self.features = self.features.to(device)
        self.grades = self.grades.to(device)
        return self

    def batches(self, plan: Iterator[BatchPlan]) -> Iterator[dict[str, torch.Tensor]]:
        """Each batch indexes the features directly (no DataLoader: they are already tensors). In-memory features
        take one `[B, 2]` index copy to their device per batch and are gathered there; memory-mapped ones are
        gathered on the host and copied over."""
        device = self.grades.device
        for batch in plan:
            index = torch.tensor(batch, dtype=torch.long).reshape(-1, 2)
            if isinstance(self.features, torch.Tensor):
                index = index.to(self.features.device)
                features = self.features[index[:, 0], index[:, 1]]
            else:
                features = self.features.gather(index[:, 0].numpy(), index[:, 1].numpy()).to(device)
            yield {"image_features": features, "labels": self.grades[index[:, 0].to(device)]}

    def view_features(self, model: RetinaScanModel) -> torch.Tensor:
        """Un-augmented features `[N, D]`; the backbone is frozen, so `model` does not change them."""
        if isinstance(self.features, torch.Tensor):
            return self.features[:, 0]
        return self.features.view(0)

    def feature_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std over every row and view (what the model standardises features with),
        streamed over the same blocks whether the features are in memory or memory-mapped, so both give
        identical statistics."""
        if not isinstance(self.features, torch.Tensor):
            return self.features.statistics()
        features = self.features.detach().cpu()
        return streamed_moments(
            features[start : start + STATISTICS_BLOCK_ROWS].reshape(-1, features.shape[-1]).numpy()
            for start in range(0, len(features), STATISTICS_BLOCK_ROWS)
        )


@dataclass
class ImageSplit:
    """A split as images, for end-to-end fine-tuning: every batch and evaluation runs the backbone.

    Attributes:
        dataset: the split's images through the processor and augmentation.
        accelerator: device and process layout for evaluation forwards.
        batch_size, num_workers, progress: for evaluation forwards.
    """

    dataset: FundusViews
    accelerator: Accelerator
    batch_size: int
    num_workers: int = 0
    progress: bool = True

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def grades(self) -> torch.Tensor:
        return torch.tensor(self.dataset.grades)

    @property
    def image_ids(self) -> list[str]:
        return self.dataset.image_ids

    @property
    def sources(self) -> list[str]:
        return list(self.dataset.split["source"])

    def batches(self, plan: Iterator[BatchPlan]) -> Iterator[dict[str, torch.Tensor]]:
        requests: list[list[ViewRequest]] = [[(row, (view,)) for row, view in batch] for batch in plan]
        device = self.accelerator.device
        for batch in view_loader(self.dataset, requests, self.num_workers):
            yield {"pixel_values": batch["pixel_values"].to(device), "labels": batch["labels"].to(device)}

    def view_features(self, model: RetinaScanModel) -> torch.Tensor:
        """Un-augmented features `[N, D]` under the model's current backbone weights."""
        computed = compute_features(
            model,
            self.dataset,
            [(row, (0,)) for row in range(len(self.dataset))],
            accelerator=self.accelerator,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            progress=self.progress,
            description="backbone features",
        )
        features = torch.empty(len(self.dataset), model.config.embedding_dim)
        features[computed.rows] = computed.features
        return features


TrainingSplit = CachedSplit | ImageSplit

__all__ = ["IN_MEMORY_LIMIT_BYTES", "BatchPlan", "CachedSplit", "ImageSplit", "TrainingSplit", "epoch_plan"]
