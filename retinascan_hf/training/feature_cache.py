"""On-disk cache of frozen-backbone features, keyed by backbone+processor fingerprint, split, view and image.

With a frozen backbone, every epoch would push the same pixels through the same weights: the reference
project spent most of its ~6 GPU-hours doing exactly that. Here each `(image, view)` goes through CLIP once,
ever, and every later epoch, and every later run with the same backbone weights, processor settings and
augmentation, reads it back. Rows are keyed by image id *and* a digest of the encoded image
(`FundusViews.cache_keys`), not by row position: extending a split computes only its new images, and an id
reused for a different picture is recomputed, never served stale. (Keys are per split, so moving an image
to another split recomputes it.)

Layout: `cache_dir/<fingerprint>/<split>-view<v>[-<augmentation key>][-float16]/chunk-*.safetensors`. Each
chunk holds `features` `[M, D]` and `keys` `[M, 2]` (a 128-bit hash of each row's key) and is written
once, atomically (temporary file, then rename), and never rewritten: so caching N images writes about the
cache's size, not N²/chunk as rewriting one shard per split would, a kill loses at most the chunk in flight,
and every process of a multi-process run writes the chunks of the batches it computed itself, with no
gather. Readers memory-map the chunks (`CachedFeatures`), so no process holds a large cache in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import mmap
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from ..image_processing_retinascan import RetinaScanImageProcessor
from ..modeling_retinascan import RetinaScanModel
from .augment import FundusAugmentation
from .data import FundusViews, ViewRequest, forward_views

_FORMAT = "retinascan-feature-cache"
_VERSION = "3"  # append-only chunk folders; version 2 single-shard files are ignored (recomputed once)
_NOT_PROCESSING = ("auto_map", "processor_class")  # processor dict keys that do not change its output
FLUSH_EVERY = 2048  # images per chunk (at least): a killed run loses at most this much backbone work
STATISTICS_BLOCK_ROWS = 1024  # rows per block of the streamed feature statistics (cache-sized float64 blocks)
MAX_CHUNKS_PER_SPLIT = 32  # larger splits get larger chunks, so a reader maps a bounded number of files
MAX_RESIDENT_BYTES = 1 << 30  # chunk bytes a reader keeps resident at once (its share of the process's memory)
_MAX_MAPS = 512  # chunk files mapped at once (each mapping holds a file descriptor)
CACHE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8")}
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_CHUNK_SUFFIX = ".safetensors"
_CHUNK_NUMBERS = itertools.count()


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


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """`[N, 2]` int64: a 128-bit BLAKE2b hash of each cache key (fixed size, so 1M keys cost 16 MB, not a JSON)."""
    digests = b"".join(hashlib.blake2b(key.encode(), digest_size=16).digest() for key in keys)
    return np.frombuffer(digests, dtype="<i8").reshape(len(keys), 2)


@dataclass
class CacheStats:
    """Feature rows (one per image and view) taken from the cache and computed by backbone forwards."""

    reused: int = 0
    computed: int = 0

    def __iadd__(self, other: CacheStats) -> CacheStats:
        self.reused += other.reused
        self.computed += other.computed
        return self


def _read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset its data starts at (nothing is unpickled)."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if not 0 < size <= _MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (bad header length).")
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a safetensors file (unreadable header).") from error
    return header, 8 + size


@dataclass(frozen=True)
class _TensorSpan:
    """Where one tensor of a safetensors file lies: absolute byte offset, dtype, shape."""

    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @classmethod
    def of(cls, path: Path, header: dict, data_start: int, name: str) -> _TensorSpan:
        entry = header.get(name)
        if not isinstance(entry, dict) or entry.get("dtype") not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path} lacks a readable {name!r} tensor; delete the file to recompute it.")
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        shape = tuple(int(side) for side in entry["shape"])
        begin, end = (int(offset) for offset in entry["data_offsets"])
        if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > path.stat().st_size:
            raise ValueError(f"{path} is truncated or corrupt ({name!r}); delete the file to recompute it.")
        return cls(data_start + begin, dtype, shape)

    def read(self, path: Path) -> np.ndarray:
        return np.fromfile(path, dtype=self.dtype, count=math.prod(self.shape), offset=self.offset).reshape(self.shape)

    def map(self, path: Path) -> tuple[mmap.mmap, np.ndarray]:
        """The tensor as a read-only view of a shared file mapping (pages are read from the page cache when
        touched); the mapping itself is returned too, to release its pages (`madvise`)."""
        start = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY
        nbytes = math.prod(self.shape) * self.dtype.itemsize
        with open(path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), self.offset - start + nbytes, access=mmap.ACCESS_READ, offset=start)
        array = np.frombuffer(mapping, dtype=self.dtype, count=math.prod(self.shape), offset=self.offset - start)
        return mapping, array.reshape(self.shape)


@dataclass
class _Located:
    """Where the rows of a split lie for one view: chunk files, and per row its chunk (-1: absent) and row."""

    paths: list[Path]
    chunk: np.ndarray  # [N] int32
    row: np.ndarray  # [N] int64


class CachedFeatures:
    """Features `[N, V, D]` of one split, memory-mapped from cache chunks and read on demand as float32.

    Rows are read per batch (`gather`), per view (`view`), or all at once (`load`) when they fit in memory;
    statistics stream over fixed-size blocks. Chunks are mapped once (up to `_MAX_MAPS` at a time, least
    recently used unmapped first) and their touched pages counted: beyond `max_resident_bytes` the least
    recently used chunks give their pages back (`madvise(MADV_DONTNEED)`; they stay mapped and are read again
    from the page cache when next touched), so the cache's share of this process's resident memory stays
    bounded whatever the cache's size, at the cost of a minor page fault per row read after a release.
    """

    def __init__(
        self, located: Sequence[_Located], dim: int, dtype: np.dtype, *, max_resident_bytes: int | None = None
    ):
        if any((entry.chunk < 0).any() for entry in located):
            raise ValueError("CachedFeatures needs every (row, view) present in the cache.")
        paths = sorted({path for entry in located for path in entry.paths})
        index = {path: number for number, path in enumerate(paths)}
        numbers = [np.array([index[path] for path in entry.paths] or [0], dtype=np.int32) for entry in located]
        self.paths = paths
        self.chunk = np.stack([number[entry.chunk] for number, entry in zip(numbers, located, strict=True)], axis=1)
        self.row = np.stack([entry.row for entry in located], axis=1)
        self.dim = dim
        self.dtype = dtype
        self.max_resident_bytes = MAX_RESIDENT_BYTES if max_resident_bytes is None else max_resident_bytes
        self._maps: OrderedDict[int, tuple[mmap.mmap, np.ndarray]] = OrderedDict()  # least recently used first
        self._resident: OrderedDict[int, int] = OrderedDict()  # chunks touched since their last release
        self._resident_bytes = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.chunk.shape[0], self.chunk.shape[1], self.dim)

    def __len__(self) -> int:
        return self.chunk.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the rows as float32 (what `load` would allocate)."""
        return math.prod(self.shape) * 4

    def _array(self, number: int) -> np.ndarray:
        entry = self._maps.get(number)
        if entry is None:
            if len(self._maps) >= _MAX_MAPS:
                oldest, _ = self._maps.popitem(last=False)  # unmapped once no array refers to it
                self._resident_bytes -= self._resident.pop(oldest, 0)
            path = self.paths[number]
            header, data_start = _read_header(path)
            entry = self._maps[number] = _TensorSpan.of(path, header, data_start, "features").map(path)
        self._maps.move_to_end(number)
        if number in self._resident:
            self._resident.move_to_end(number)
        else:
            self._resident[number] = entry[1].nbytes
            self._resident_bytes += entry[1].nbytes
            while self._resident_bytes > self.max_resident_bytes and len(self._resident) > 1:
                released, size = self._resident.popitem(last=False)
                if hasattr(mmap, "MADV_DONTNEED"):  # elsewhere the page cache alone decides
                    self._maps[released][0].madvise(mmap.MADV_DONTNEED)
                self._resident_bytes -= size
        return entry[1]

    def gather(self, rows: np.ndarray | torch.Tensor, views: np.ndarray | torch.Tensor) -> torch.Tensor:
        """`[B, D]` float32 features of the `(row, view)` pairs."""
        rows, views = np.asarray(rows, dtype=np.int64), np.asarray(views, dtype=np.int64)
        chunks, offsets = self.chunk[rows, views], self.row[rows, views]
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if not len(rows):
            return torch.from_numpy(out)
        order = np.argsort(chunks, kind="stable")
        ordered = chunks[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        for start, end in zip(starts, [*starts[1:], len(order)], strict=True):
            members = order[start:end]
            out[members] = self._array(int(ordered[start]))[offsets[members]]
        return torch.from_numpy(out)

    def _blocks(self, block_rows: int) -> range:
        return range(0, len(self), block_rows)

    def view(self, view: int, block_rows: int = 16384) -> torch.Tensor:
        """`[N, D]` float32 features of one view (e.g. view 0, the un-augmented pictures)."""
        out = torch.empty(len(self), self.dim)
        for start in self._blocks(block_rows):
            rows = np.arange(start, min(start + block_rows, len(self)))
            out[start : start + len(rows)] = self.gather(rows, np.full(len(rows), view))
        return out

    def load(self) -> torch.Tensor:
        """Every row in memory, `[N, V, D]` float32: the same values `gather` returns."""
        return torch.stack([self.view(view) for view in range(self.shape[1])], dim=1)

    def statistics(self, block_rows: int = STATISTICS_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std over every row and view, streamed over blocks of rows."""
        n_views = self.shape[1]

        def blocks() -> Iterator[np.ndarray]:
            for start in self._blocks(block_rows):
                rows = np.arange(start, min(start + block_rows, len(self)))
                yield self.gather(np.repeat(rows, n_views), np.tile(np.arange(n_views), len(rows))).numpy()

        return streamed_moments(blocks())


def streamed_moments(blocks: Iterable[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and unbiased std of the rows of `blocks` (`[b, D]` each), in float64 with Chan et
    al.'s pairwise update: any number of rows in bounded memory, and the same result for the same blocks
    whether they come from memory or from a memory-mapped cache."""
    count, mean, m2 = 0, 0.0, 0.0
    for block in blocks:
        block = np.asarray(block, dtype=np.float64)
        block_count, block_mean = len(block), block.mean(axis=0)
        block_m2 = ((block - block_mean) ** 2).sum(axis=0)
        total = count + block_count
        delta = block_mean - mean
        mean = mean + delta * block_count / total
        m2 = m2 + block_m2 + delta**2 * count * block_count / total
        count = total
    if count < 2:
        raise ValueError("Feature statistics need at least two feature vectors.")
    return torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(m2 / (count - 1))).float()


class FeatureCache:
    """The cache folder of one backbone+processor fingerprint (and storage dtype).

    View 0 (the un-augmented picture) depends on the backbone and processor only, so its chunks are shared by
    runs with any seed or augmentation; augmented views carry the `augmentation_key` in their folder name.
    `dtype="float16"` halves disk and page cache; values are rounded once when computed, and every run reads
    the rounded values, whether it computed them or found them.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str, augmentation: str, dtype: str = "float32"):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"feature cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}.")
        self.fingerprint = fingerprint
        self.augmentation = augmentation
        self.dtype = dtype
        self.directory = Path(root) / fingerprint

    def view_dir(self, split: str, view: int) -> Path:
        suffix = "" if view == 0 else f"-{self.augmentation}"
        precision = "" if self.dtype == "float32" else f"-{self.dtype}"
        return self.directory / f"{split}-view{view}{suffix}{precision}"

    def chunk_paths(self, split: str, view: int) -> list[Path]:
        """Complete chunks, oldest name first (temporary files start with a dot and are skipped)."""
        folder = self.view_dir(split, view)
        if not folder.is_dir():
            return []
        return sorted(
            path for path in folder.iterdir() if path.name.startswith("chunk-") and path.suffix == ".safetensors"
        )

    def _chunk_keys(self, path: Path, split: str, view: int, dim: int) -> np.ndarray:
        header, data_start = _read_header(path)
        metadata = header.get("__metadata__") or {}
        expected = {"format": _FORMAT, "version": _VERSION, "fingerprint": self.fingerprint, "split": split}
        expected |= {"view": str(view), "dtype": self.dtype}
        found = {name: metadata.get(name) for name in expected}
        if found != expected:
            raise ValueError(f"{path} is not a feature-cache chunk of {expected} (found {found}).")
        keys = _TensorSpan.of(path, header, data_start, "keys")
        features = _TensorSpan.of(path, header, data_start, "features")
        expected_shape = (keys.shape[0], dim)
        if features.dtype != CACHE_DTYPES[self.dtype] or features.shape != expected_shape or keys.shape[1:] != (2,):
            raise ValueError(
                f"{path} holds features {features.shape} {features.dtype} for {keys.shape[0]} keys; expected "
                f"{expected_shape} {self.dtype}. Delete the file to recompute it."
            )
        return keys.read(path)

    def locate(self, split: str, view: int, hashes: np.ndarray, dim: int) -> _Located:
        """Which chunk and row holds each of `hashes` (`[N, 2]`); the first chunk by name wins a repeated key."""
        paths = self.chunk_paths(split, view)
        chunk = np.full(len(hashes), -1, dtype=np.int32)
        row = np.zeros(len(hashes), dtype=np.int64)
        if not paths or not len(hashes):
            return _Located(paths, chunk, row)
        stored = [self._chunk_keys(path, split, view, dim) for path in paths]
        keys = np.concatenate(stored)
        owner = np.repeat(np.arange(len(paths), dtype=np.int32), [len(part) for part in stored])
        offset = np.concatenate([np.arange(len(part)) for part in stored])
        order = np.lexsort((owner, keys[:, 1], keys[:, 0]))  # by key, then by chunk: the first chunk first
        keys, owner, offset = keys[order], owner[order], offset[order]
        position = np.minimum(np.searchsorted(keys[:, 0], hashes[:, 0]), len(keys) - 1)
        found = (keys[position] == hashes).all(axis=1)
        chunk[found], row[found] = owner[position[found]], offset[position[found]]
        # Different keys sharing their first 64 bits (vanishingly rare): scan the run of equal first halves.
        for index in np.flatnonzero(~found & (keys[position, 0] == hashes[:, 0])):
            candidate = position[index]
            while candidate < len(keys) and keys[candidate, 0] == hashes[index, 0]:
                if keys[candidate, 1] == hashes[index, 1]:
                    chunk[index], row[index] = owner[candidate], offset[candidate]
                    break
                candidate += 1
        return _Located(paths, chunk, row)

    def remove_stale_temporaries(self, split: str, view: int) -> list[Path]:
        """Delete the temporary chunks that killed processes of this machine left behind, and return them.

        Only files this writer names (`.chunk-...-<host>-<pid>.safetensors.tmp`) whose process no longer
        exists on this host are removed: another machine's or a live process's chunk in flight stays.
        """
        folder, host, removed = self.view_dir(split, view), socket.gethostname(), []
        if not folder.is_dir():
            return removed
        for path in folder.glob(f".chunk-*-{host}-*{_CHUNK_SUFFIX}.tmp"):
            pid = path.name.removesuffix(f"{_CHUNK_SUFFIX}.tmp").rsplit("-", 1)[-1]
            if pid.isdigit() and not _process_exists(int(pid)):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def write_chunk(self, split: str, view: int, hashes: np.ndarray, features: np.ndarray) -> Path:
        """Write one new chunk atomically; existing chunks are never touched."""
        folder = self.view_dir(split, view)
        folder.mkdir(parents=True, exist_ok=True)
        # Time first (names sort oldest first), then what makes it unique across machines, processes and calls.
        name = f"chunk-{time.time_ns():020d}-{next(_CHUNK_NUMBERS):06d}-{socket.gethostname()}-{os.getpid()}"
        name += _CHUNK_SUFFIX
        target = folder / name
        temporary = folder / f".{name}.tmp"
        metadata = {
            "format": _FORMAT,
            "version": _VERSION,
            "fingerprint": self.fingerprint,
            "split": split,
            "view": str(view),
            "dtype": self.dtype,
        }
        tensors = {"features": np.ascontiguousarray(features, dtype=CACHE_DTYPES[self.dtype]), "keys": hashes}
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, target)
        return target


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class _ChunkWriter:
    """Buffers one process's computed rows per view and writes them as a chunk every `chunk_images` images."""

    def __init__(self, cache: FeatureCache, split: str, keys: Sequence[str], hashes: np.ndarray, chunk_images: int):
        self.cache, self.split, self.keys, self.hashes, self.chunk_images = cache, split, keys, hashes, chunk_images
        self.rows: dict[int, list[torch.Tensor]] = {}
        self.features: dict[int, list[torch.Tensor]] = {}
        self.images = 0

    def add(self, rows: torch.Tensor, views: torch.Tensor, features: torch.Tensor, images: int) -> None:
        """Buffer a batch; a non-finite feature (after rounding to the cache dtype) is refused, naming its image,
        because cached once it would silently poison every later run."""
        with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
            stored = features.numpy().astype(CACHE_DTYPES[self.cache.dtype])
        broken = np.flatnonzero(~np.isfinite(stored).all(axis=1))
        if len(broken):
            names = ", ".join(self.keys[int(rows[index])] for index in broken[:5])
            raise ValueError(
                f"The backbone produced non-finite {self.cache.dtype} features for {len(broken)} {self.split} "
                f"image(s) ({names}); nothing of them was cached. Check the backbone weights and its mixed "
                "precision, and the cache dtype (float16 overflows above 65504)."
            )
        for view in views.unique().tolist():
            chosen = views == view
            self.rows.setdefault(view, []).append(rows[chosen])
            self.features.setdefault(view, []).append(features[chosen])
        self.images += images
        if self.images >= self.chunk_images:
            self.flush()

    def flush(self) -> None:
        for view in sorted(self.rows):
            rows = torch.cat(self.rows[view]).numpy()
            self.cache.write_chunk(self.split, view, self.hashes[rows], torch.cat(self.features[view]).numpy())
        self.rows, self.features, self.images = {}, {}, 0


def _fill(
    model: RetinaScanModel,
    dataset: FundusViews,
    split: str,
    requests: Sequence[ViewRequest],
    hashes: np.ndarray,
    *,
    cache: FeatureCache,
    accelerator: Accelerator,
    batch_size: int,
    num_workers: int,
    progress: bool,
    flush_every: int,
) -> None:
    """Compute this process's share of `requests` and write it as chunks.

    Batches are formed from the full request list and dealt out whole (batch `b` to process
    `b % num_processes`), and every forward holds exactly `batch_size` images ([`fixed_shape_features`]), so an
    image's features are the same bits whatever the number of processes: a multi-process cache equals a
    single-process one. The loader draws no global randomness ([`view_loader`]), so a run that fills the cache
    and one that reuses it continue identically.
    """
    batches = [list(requests[start : start + batch_size]) for start in range(0, len(requests), batch_size)]
    mine = batches[accelerator.process_index :: accelerator.num_processes]
    chunk_images = max(flush_every, math.ceil(len(requests) / MAX_CHUNKS_PER_SPLIT))
    share = f" (this process's share, 1 of {accelerator.num_processes})" if accelerator.num_processes > 1 else ""
    bar = tqdm(
        total=sum(len(batch) for batch in mine),
        desc=f"caching {split} features{share}",
        unit="img",
        disable=not (progress and accelerator.is_local_main_process),
    )
    if accelerator.is_local_main_process:
        for view in sorted({view for _, views in requests for view in views}):
            cache.remove_stale_temporaries(split, view)
    writer = _ChunkWriter(cache, split, dataset.cache_keys, hashes, chunk_images)
    computed = forward_views(
        model, dataset, mine, accelerator=accelerator, batch_size=batch_size, num_workers=num_workers, bar=bar
    )
    for batch, result in zip(mine, computed, strict=True):
        writer.add(result.rows, result.views, result.features, images=len(batch))
    writer.flush()
    bar.close()


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
) -> tuple[CachedFeatures, CacheStats]:
    """Features `[N, n_views, D]` of every row of `dataset`, memory-mapped from the cache, computing (sharded
    over processes) only the `(image, view)` pairs the cache lacks.

    Each process writes the chunks of its own batches (at least `flush_every` images each), so a run killed
    while filling the cache keeps every chunk it finished. Every process then maps the same chunks: the
    features returned are always the ones read from disk, whether this run computed them or found them.
    """
    dim = model.config.embedding_dim
    hashes = key_hashes(dataset.cache_keys)

    def locate() -> list[_Located]:
        return [cache.locate(split, view, hashes, dim) for view in range(n_views)]

    located = locate()
    missing = np.stack([entry.chunk < 0 for entry in located], axis=1)
    requests = [
        (row, tuple(np.flatnonzero(missing[row]).tolist())) for row in np.flatnonzero(missing.any(axis=1)).tolist()
    ]
    computed = int(missing.sum())
    if requests:
        accelerator.wait_for_everyone()  # every process planned from the same cache state before anyone writes
        _fill(
            model,
            dataset,
            split,
            requests,
            hashes,
            cache=cache,
            accelerator=accelerator,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            flush_every=flush_every,
        )
        accelerator.wait_for_everyone()
        located = locate()
        absent = sum(int((entry.chunk < 0).sum()) for entry in located)
        if absent:
            raise RuntimeError(f"{absent} {split} features are still missing from {cache.directory} after caching.")
    features = CachedFeatures(located, dim, CACHE_DTYPES[cache.dtype])
    return features, CacheStats(reused=len(dataset) * n_views - computed, computed=computed)


__all__ = [
    "CACHE_DTYPES",
    "CacheStats",
    "CachedFeatures",
    "FeatureCache",
    "augmentation_key",
    "backbone_fingerprint",
    "cached_features",
    "key_hashes",
    "streamed_moments",
]
