"""Corpus rows -> model pixels, and batches of them through the backbone, sharded over processes.

The image column is read undecoded (path or bytes), so the processor decodes every image itself: that is
what lets it decode a 12 MP JPEG at a fraction of its resolution, and what makes the training picture the
exact picture the pipeline sees at inference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..image_processing_retinascan import RetinaScanImageProcessor
from ..modeling_retinascan import RetinaScanModel
from .augment import FundusAugmentation


def _content_digest(encoded: dict[str, Any]) -> str:
    data = encoded.get("bytes")
    if data is None:
        with open(encoded["path"], "rb") as handle:
            data = handle.read()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


# A unit of work: one corpus row and the views of it to produce.
ViewRequest = tuple[int, tuple[int, ...]]


class FundusViews(Dataset):
    """Item `(row, views)` of a corpus split -> the processor's pixel values of each requested view.

    Args:
        split: a corpus split (`image`, `grade`, `image_id` columns).
        processor: crops, resizes and normalises exactly as at inference.
        augmentation: how views other than 0 are made.
        seed: with the image id and view number, fixes every augmented view.
    """

    def __init__(
        self,
        split: datasets.Dataset,
        processor: RetinaScanImageProcessor,
        augmentation: FundusAugmentation,
        seed: int,
    ):
        self.split = split.cast_column("image", datasets.Image(decode=False))
        self.processor = processor
        self.augmentation = augmentation
        self.seed = seed
        self.image_ids: list[str] = list(split["image_id"])
        self.grades: list[int] = list(split["grade"])
        self._cache_keys: list[str] | None = None

    @property
    def cache_keys(self) -> list[str]:
        """`<image_id>@<content digest>` per row: what the feature cache is keyed by.

        The id alone is not enough: two corpora can reuse an id for different pictures (a 256 px copy and
        the camera original of one EyePACS image), and a shared cache must never serve one's features
        for the other. Hashing the encoded bytes costs a read of each file, no decoding.
        """
        if self._cache_keys is None:
            self._cache_keys = [
                f"{image_id}@{_content_digest(encoded)}"
                for image_id, encoded in zip(self.image_ids, self.split["image"], strict=True)
            ]
        return self._cache_keys

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, request: ViewRequest) -> dict[str, Any]:
        row, views = request
        encoded = self.split[row]["image"]
        source = encoded["bytes"] if encoded.get("bytes") is not None else encoded["path"]
        picture = self.processor.to_model_image(source)
        image_id = self.image_ids[row]
        pixels = [
            self.processor.normalize_image(
                self.augmentation.view(picture, seed=self.seed, image_id=image_id, view=view)
            )
            for view in views
        ]
        return {
            "pixel_values": torch.from_numpy(np.stack(pixels)),
            "row": torch.full((len(views),), row, dtype=torch.long),
            "view": torch.tensor(views, dtype=torch.long),
            "labels": torch.full((len(views),), self.grades[row], dtype=torch.long),
        }


def collate_views(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate items (each holding one or more views) along the batch axis."""
    return {key: torch.cat([item[key] for item in items]) for key in items[0]}


def view_loader(dataset: FundusViews, batches: Sequence[Sequence[ViewRequest]], num_workers: int) -> DataLoader:
    """A loader whose every batch is one list of `(row, views)` requests.

    It draws its worker seed from a generator of its own: by default a `DataLoader` takes it from the global
    torch RNG at every iteration, so whether features came from the cache (no loader) or were computed (one
    loader per group) would shift every later dropout mask, and two runs on the same data and seed would
    train different models. Views are seeded explicitly (`FundusAugmentation.view`), so workers need no
    randomness of their own.
    """
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate_views,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


@dataclass
class ComputedFeatures:
    """Backbone features of `(row, view)` pairs: `rows` `[M]`, `views` `[M]`, `features` `[M, D]` (float32, CPU)."""

    rows: torch.Tensor
    views: torch.Tensor
    features: torch.Tensor

    @classmethod
    def concatenate(cls, parts: Sequence[ComputedFeatures], dim: int) -> ComputedFeatures:
        if not parts:
            empty = torch.empty(0, dtype=torch.long)
            return cls(empty, empty.clone(), torch.empty(0, dim))
        return cls(*(torch.cat([getattr(part, name) for part in parts]) for name in ("rows", "views", "features")))


@torch.no_grad()
def fixed_shape_features(
    model: RetinaScanModel, pixel_values: torch.Tensor, batch_size: int, accelerator: Accelerator
) -> torch.Tensor:
    """Backbone features `[B, D]` (float32, CPU) of `pixel_values`, in forwards of exactly `batch_size` images.

    The last forward is padded with copies of its last image. Why: the matrix kernels a backend picks, and so
    the rounding of each output row, depend on the batch shape (a lone image and the same image in a batch of
    32 differ by ~1e-6), not on the other rows. With one shape, an image's features are the same bits whether
    it was computed in this run, in an earlier run that filled the cache with other images, or after a resume,
    so training on them is reproducible whatever the feature cache held.
    """
    parts = []
    for start in range(0, len(pixel_values), batch_size):
        chunk = pixel_values[start : start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = torch.cat([chunk, chunk[-1:].expand(batch_size - real, *chunk.shape[1:])])
        with accelerator.autocast():
            features = model.forward_features(chunk.to(accelerator.device, model.dtype))
        parts.append(features[:real].float().cpu())
    return torch.cat(parts) if parts else torch.empty(0, model.config.embedding_dim)


@torch.no_grad()
def compute_features(
    model: RetinaScanModel,
    dataset: FundusViews,
    requests: Sequence[ViewRequest],
    *,
    accelerator: Accelerator,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "backbone features",
) -> ComputedFeatures:
    """Run the backbone over `requests`, each process taking every `num_processes`-th request; every process
    receives all results. Forwards hold `batch_size` images each (see [`fixed_shape_features`]).

    `model` is the unwrapped model (inference needs no gradient synchronisation). Its train/eval mode is
    restored afterwards, so this can run between training epochs.
    """
    mine = list(requests[accelerator.process_index :: accelerator.num_processes])
    batches = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
    was_training = model.training
    model.eval()
    parts = []
    bar = tqdm(
        total=len(mine), desc=description, unit="img", disable=not (progress and accelerator.is_local_main_process)
    )
    for requested, batch in zip(batches, view_loader(dataset, batches, num_workers) if batches else (), strict=True):
        features = fixed_shape_features(model, batch["pixel_values"], batch_size, accelerator)
        parts.append(ComputedFeatures(batch["row"], batch["view"], features))
        bar.update(len(requested))
    bar.close()
    model.train(was_training)
    local = ComputedFeatures.concatenate(parts, model.config.embedding_dim)
    if accelerator.num_processes == 1:
        return local
    return ComputedFeatures.concatenate(gather_object([local]), model.config.embedding_dim)


__all__ = [
    "ComputedFeatures",
    "FundusViews",
    "ViewRequest",
    "collate_views",
    "compute_features",
    "fixed_shape_features",
    "view_loader",
]
