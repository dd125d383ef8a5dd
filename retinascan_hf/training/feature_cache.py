"""On-disk cache of frozen-backbone features, keyed by backbone+processor fingerprint, split, view and image.

With a frozen backbone, every epoch would push the same pixels through the same weights: the reference
project spent most of its ~6 GPU-hours doing exactly that. Here each `(image, view)` goes through CLIP once,
ever: features land in `cache_dir/<fingerprint>/<split>-view<v>[-<augmentation key>].safetensors` (float32
rows plus their keys in the metadata), and every later epoch, and every later run with the same backbone
weights, processor settings and augmentation, reads them back. Rows are keyed by image id *and* a digest of
the encoded image (`FundusViews.cache_keys`), not by row position: extending a split recomputes only its new
images, and an id reused for a different picture is recomputed, never served stale. (Shards are per split, so
moving an image to another split recomputes it.) Files are replaced atomically, so a killed run never leaves
a torn shard behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import save_file

from ..image_processing_retinascan import RetinaScanImageProcessor
from ..modeling_retinascan import RetinaScanModel
from .augment import FundusAugmentation
from .data import FundusViews, compute_features

_FORMAT = "retinascan-feature-cache"
_VERSION = "2"  # rows keyed by `<image_id>@<content digest>`
_NOT_PROCESSING = ("auto_map", "processor_class")  # processor dict keys that do not change its output
FLUSH_EVERY = 2048  # images between shard rewrites: a killed run loses at most this much backbone work


def backbone_fingerprint(model: RetinaScanModel, processor: RetinaScanImageProcessor) -> str:
    """Hash of what decides an un-augmented feature: the image tower's weights (not only its config: two
    random or fine-tuned towers share a config), the processor settings and the version of its pixel code."""
    digest = hashlib.sha256()
    towers = {"vision_model": model.clip.vision_model, "visual_projection": model.clip.visual_projection}
    for prefix, module in towers.items():
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().data)
    # `auto_map` (remote-code bookkeeping `save_pretrained` adds) does not change a pixel: a processor loaded from
    # a model folder must find the features cached by the in-memory processor that trained it.
    settings = {key: value for key, value in processor.to_dict().items() if key not in _NOT_PROCESSING}
    # The same settings give other pictures after a change to the processing code: its version says so.
    settings["pixels_version"] = type(processor).PIXELS_VERSION
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


def augmentation_key(augmentation: FundusAugmentation, seed: int) -> str:
    """Hash of what decides an augmented view beyond the backbone: the augmentation settings and seed."""
    settings = json.dumps({"augmentation": augmentation.to_dict(), "seed": seed}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:12]


@dataclass
class CacheStats:
    """Feature rows (one per image and view) taken from the cache and computed by backbone forwards."""

    reused: int = 0
    computed: int = 0

    def __iadd__(self, other: CacheStats) -> CacheStats:
        self.reused += other.reused
        self.computed += other.computed
        return self


@dataclass
class _Shard:
    image_ids: list[str]
    features: torch.Tensor  # [N, D] float32

    def row_of(self) -> dict[str, int]:
        return {image_id: row for row, image_id in enumerate(self.image_ids)}


class FeatureCache:
    """The cache folder of one backbone+processor fingerprint.

    View 0 (the un-augmented picture) depends on the backbone and processor only, so its shards are shared by
    runs with any seed or augmentation; augmented views carry the `augmentation_key` in their file name.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str, augmentation: str):
        self.fingerprint = fingerprint
        self.augmentation = augmentation
        self.directory = Path(root) / fingerprint

    def shard_path(self, split: str, view: int) -> Path:
        suffix = "" if view == 0 else f"-{self.augmentation}"
        return self.directory / f"{split}-view{view}{suffix}.safetensors"

    def read(self, split: str, view: int, dim: int) -> _Shard:
        path = self.shard_path(split, view)
        if not path.is_file():
            return _Shard([], torch.empty(0, dim))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != _FORMAT or metadata.get("fingerprint") != self.fingerprint:
                raise ValueError(f"{path} is not a feature-cache shard of fingerprint {self.fingerprint}.")
            if metadata.get("version") != _VERSION:  # older key scheme: start the shard afresh
                return _Shard([], torch.empty(0, dim))
            features = handle.get_tensor("features")
        image_ids = json.loads(metadata["image_ids"])
        if features.shape != (len(image_ids), dim):
            raise ValueError(
                f"{path} holds features of shape {tuple(features.shape)}, expected ({len(image_ids)}, {dim})."
            )
        return _Shard(image_ids, features)

    def write(self, split: str, view: int, shard: _Shard) -> None:
        """Replace the shard atomically (temporary file in the same folder, then rename)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.shard_path(split, view)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        metadata = {
            "format": _FORMAT,
            "version": _VERSION,
            "fingerprint": self.fingerprint,
            "image_ids": json.dumps(shard.image_ids),
        }
        save_file({"features": shard.features.contiguous()}, str(temporary), metadata=metadata)
        os.replace(temporary, target)


def cached_features(
    model: RetinaScanModel,
    dataset: FundusViews,
    split: str,
    n_views: int,
    *,
    cache: FeatureCache,
    accelerator: Accelerator,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
    flush_every: int = FLUSH_EVERY,
) -> tuple[torch.Tensor, CacheStats]:
    """Features `[N, n_views, D]` of every row of `dataset`, computing (sharded over processes) only the
    `(image, view)` pairs the cache lacks. Only the main process writes; all processes return the features.

    Missing images are processed `flush_every` at a time and the shards rewritten after each group, so a run
    killed while filling the cache keeps what it computed.
    """
    dim = model.config.embedding_dim
    shards = [cache.read(split, view, dim) for view in range(n_views)]
    rows_of = [shard.row_of() for shard in shards]
    features = torch.empty(len(dataset), n_views, dim)
    for view, (shard, row_of) in enumerate(zip(shards, rows_of, strict=True)):
        known = [(row, row_of[key]) for row, key in enumerate(dataset.cache_keys) if key in row_of]
        if known:
            rows, stored = map(torch.tensor, zip(*known, strict=True))
            features[rows, view] = shard.features[stored]
    requests = []
    for row, key in enumerate(dataset.cache_keys):
        missing = tuple(view for view in range(n_views) if key not in rows_of[view])
        if missing:
            requests.append((row, missing))
    computed_rows = 0
    for start in range(0, len(requests), flush_every):
        computed = compute_features(
            model,
            dataset,
            requests[start : start + flush_every],
            accelerator=accelerator,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            description=f"caching {split} features ({start + 1}-{min(start + flush_every, len(requests))} "
            f"of {len(requests)} images)",
        )
        features[computed.rows, computed.views] = computed.features
        computed_rows += len(computed.rows)
        if accelerator.is_main_process:
            for view in computed.views.unique().tolist():
                new_rows = computed.rows[computed.views == view]
                shards[view] = _Shard(
                    shards[view].image_ids + [dataset.cache_keys[row] for row in new_rows.tolist()],
                    torch.cat([shards[view].features, features[new_rows, view]]),
                )
                cache.write(split, view, shards[view])
        accelerator.wait_for_everyone()
    stats = CacheStats(reused=len(dataset) * n_views - computed_rows, computed=computed_rows)
    return features, stats


__all__ = ["CacheStats", "FeatureCache", "augmentation_key", "backbone_fingerprint", "cached_features"]
