"""Feature bank: training-set embeddings and grades, stored beside the weights, voted on by exact kNN.

The bank is what the pipeline's default decision consults: the grades of the training images nearest
to a query in the model's embedding space. It is stored as `feature_bank.safetensors` (fp16 L2-normalised
embeddings, int64 grades, and image ids and sources as UTF-8 byte tensors with offsets) and resolved
exactly like transformers resolves weights: a local folder, or a Hub repo id through the cache (revision,
offline mode, token).

The file also carries an [`OODReference`]: CLIP image embeddings of (a sample of) the training images, with
their own leave-one-out neighbour distance, from which `ood_scores` says how far a new image lies from
everything the model was trained on.

Banks of a million rows work in bounded memory: the file is written in blocks, and read back
memory-mapped (the embeddings and id strings stay in the page cache; only what a query touches is read).
A 1,000,000 x 512 bank is a ~1.1 GB file. The Hub accepts files up to 50 GB and recommends under 20 GB
per file, which a 512-d bank reaches at about 18 million rows; larger banks belong outside the model repo.

Search is exact. Small banks are scanned in float32. Larger CPU banks are first scanned with int8 codes
(a quarter of the float32 bytes, integer dot products accumulated exactly), every row whose int8 score
could still reach the top `k` under a proven error bound is kept, and those candidates are re-ranked with
float32 dot products: the same neighbours as a float32 scan, at the memory traffic of an int8 one.

This file is copied verbatim into model repositories as remote code.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import RemoteEntryNotFoundError
from safetensors import SafetensorError, safe_open
from transformers.utils import logging

from .validation_retinascan import InvalidArtefactError, check_finite_tensor, check_number

# A child of transformers' root logger, so that `transformers.logging.set_verbosity_*` and TRANSFORMERS_VERBOSITY
# apply to it (a logger named plainly `__name__` would sit outside transformers' hierarchy and ignore them).
logger = logging.get_logger(f"transformers.{__name__}")

FEATURE_BANK_NAME = "feature_bank.safetensors"
_FORMAT = "retinascan-feature-bank"
_VERSION = "2"  # 1: image ids and sources as JSON in the metadata (still read); 2: as byte tensors
_BLOCK_ROWS = 4096  # rows per block of element-wise passes (normalising, coding, checking): cache-sized
_SCAN_ROWS = 65536  # default rows per block of a float32 scan
_WRITE_BLOCK_BYTES = 1 << 24
_HUB_RECOMMENDED_FILE_BYTES = 20 * 10**9
_NORM_TOLERANCE = 1e-2  # stored rows are L2-normalised fp16: their norms lie within ~1e-3 of 1
_ST_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64, "U8": np.uint8}
_NP_TO_ST = {np.dtype(value): key for key, value in _ST_DTYPES.items()}
_UNIT_ROUNDOFF_FP32 = 2.0**-24
_BOUND_SLACK = 1e-3  # relative headroom on error bounds computed in float32
_FIRST_CANDIDATES = 32  # rows beyond k re-ranked first, to find a tight exact k-th similarity


# Neighbours whose mean distance makes an OOD score, and the most training images the reference keeps: a fixed
# random sample bounds its size and cost (an exact search over 4,096 rows) whatever the training set's size.
OOD_NEIGHBORS = 10
OOD_REFERENCE_ROWS = 4096
# The OOD reference is searched through int8 codes from this size: it is scored right after a forward pass has
# evicted it from cache, where reading a quarter of the bytes matters more than it does in a warm loop.
_OOD_PREFILTER_MIN_ROWS = 1024
# Floor of the reference distance, so a reference made of duplicates cannot divide by zero.
_MIN_OOD_SCALE = 1e-6


def _check_rows(name: str, rows: torch.Tensor) -> None:
    """Refuse NaN/inf and all-zero rows: a zero vector has no direction to compare by cosine."""
    check_finite_tensor(name, rows)
    zero_rows = torch.nonzero(rows.detach().float().norm(dim=-1) <= 1e-6).flatten()
    if len(zero_rows):
        raise InvalidArtefactError(
            f"{name} has {len(zero_rows)} all-zero row(s) of {rows.shape[0]} (first: row {int(zero_rows[0])}); "
            "a zero vector has no direction to compare.",
            field=name,
        )


class OODReference:
    """How far an image lies from the training images, in units of how far training images lie from each other.

    Holds the CLIP image embeddings (the backbone's `image_features`) of at most `OOD_REFERENCE_ROWS` training
    images. A query's score is its mean cosine distance to the `k` nearest of them, divided by `scale`: the
    median of that same distance for each reference row against the others (leave-one-out). About 1 means
    "as close as training images are to each other"; a picture unlike anything trained on scores far higher.

    The backbone's embedding, not the bank's: the grading heads are trained to keep only what separates
    grades, so a picture that is no fundus lands among the grade clusters just like an ambiguous fundus does
    (quickstart model: disc-shaped non-fundus pictures scored 1.5-2.9 there, inside the 0.2-21 range of
    validation fundus images), while CLIP's embedding keeps what the picture shows.

    Args:
        features: `[M, D]` image embeddings (M >= 2); stored L2-normalised in float32.
        k, scale: as read back from a saved bank; computed from `features` when not given.
    """

    def __init__(self, features: torch.Tensor, k: int | None = None, scale: float | None = None):
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[0] < 2 or not features.is_floating_point():
            raise InvalidArtefactError(
                f"ood_features must be a floating [M, D] tensor with M >= 2, got {features.dtype} "
                f"{tuple(features.shape)}.",
                field="ood_features",
            )
        _check_rows("ood_features", features)
        self.features = torch.nn.functional.normalize(features.detach().float().cpu(), dim=-1)
        self.index = ExactCosineIndex(self.features, _OOD_PREFILTER_MIN_ROWS, name="OOD reference")
        if (k is None) != (scale is None):
            raise InvalidArtefactError("ood_k and ood_scale come together: give both or neither.", field="ood_k")
        if k is None:
            k = min(OOD_NEIGHBORS, len(self.features) - 1)
            rows = torch.arange(len(self.features))
            scale = max(float(self._mean_distance(self.features, k, exclude=rows).median()), _MIN_OOD_SCALE)
        self.k = check_number("ood_k", k, integer=True, low=1, high=len(self.features) - 1)
        self.scale = float(check_number("ood_scale", scale, low=0, low_open=True))

    @classmethod
    def sample(cls, features: torch.Tensor, max_rows: int = OOD_REFERENCE_ROWS) -> OODReference | None:
        """A reference from a fixed random sample of at most `max_rows` of `features`; `None` below 2 rows."""
        if len(features) < 2:
            return None
        if len(features) > max_rows:
            features = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:max_rows]]
        return cls(features)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def _mean_distance(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cosine distance of each query to its `k` nearest rows, skipping row `exclude[i]` for query `i`."""
        similarities = torch.nn.functional.normalize(queries.float(), dim=-1) @ self.features.to(queries.device).T
        if exclude is not None:
            similarities[torch.arange(len(queries)), exclude.to(queries.device)] = float("-inf")
        return (1.0 - similarities.topk(k, dim=-1).values.clamp(-1.0, 1.0)).mean(dim=-1)

    @torch.no_grad()
    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """OOD score per query `[B]` (see the class docstring); NaN for a non-finite query."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise FeatureBankMismatchError(
                f"OOD queries have shape {tuple(queries.shape)}; the reference expects [B, {self.dim}]."
            )
        scores = torch.full((len(queries),), float("nan"), device=queries.device)
        finite = torch.isfinite(queries).all(dim=-1)
        if bool(finite.any()):  # the int8 search cannot code a NaN: such a query keeps its NaN score
            similarities, _ = self.index.search(queries[finite], self.k)
            scores[finite] = (1.0 - similarities).mean(dim=-1).to(scores.dtype) / self.scale
        return scores


class FeatureBankMismatchError(ValueError):
    """A bank and the model (or query) using it disagree on embedding width or dtype."""


def bank_location(
    pretrained_model_name_or_path: str | os.PathLike, revision: str | None = None, subfolder: str = ""
) -> str:
    """Where a bank is looked for, as messages name it: a folder, or a Hub repo at a revision."""
    source = str(pretrained_model_name_or_path)
    where = f"{source}/{subfolder}" if subfolder else source
    return where if os.path.isdir(source) else f"{where} (revision {revision or 'main'})"


class FeatureBankUnavailableError(OSError):
    """Whether a repo revision has a feature bank could not be determined (no connection, Hub error, or offline
    with the file not in the cache). Raised instead of silently grading without the bank."""


@dataclass
class NeighborResult:
    """Output of [`FeatureBank.knn`].

    Attributes:
        scores (`torch.FloatTensor` of shape `[B, num_labels]`): weighted vote share per grade; rows sum to 1.
        indices (`torch.LongTensor` of shape `[B, k]`): bank rows of the neighbours, nearest first.
        similarities (`torch.FloatTensor` of shape `[B, k]`): cosine similarity to each neighbour.
    """

    scores: torch.Tensor
    indices: torch.Tensor
    similarities: torch.Tensor

    @property
    def grades(self) -> torch.Tensor:
        """The voted grade per query, `[B]` (ties go to the lower grade)."""
        return self.scores.argmax(dim=-1)


class StringColumn(Sequence):
    """Strings stored as one UTF-8 byte array plus `N + 1` offsets; each is decoded only when read.

    A million image ids as Python strings cost ~100 MB and a JSON header the safetensors format caps at
    100 MB; as bytes and offsets they are two tensors that can stay memory-mapped.
    """

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        if data.dtype != np.uint8 or offsets.dtype != np.int64:
            raise ValueError(f"Strings need uint8 bytes and int64 offsets, got {data.dtype} and {offsets.dtype}.")
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(data):
            raise ValueError("String offsets must start at 0 and end at the byte count.")
        if np.any(offsets[1:] < offsets[:-1]):
            raise ValueError("String offsets must not decrease.")
        self.data, self.offsets = data, offsets

    @classmethod
    def from_strings(cls, values: Sequence[str]) -> StringColumn:
        if isinstance(values, StringColumn):
            return values
        encoded = [str(value).encode("utf-8") for value in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"string index {index} out of range for {len(self)} entries")
        return bytes(self.data[self.offsets[index] : self.offsets[index + 1]]).decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        data, offsets = self.data, self.offsets
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            yield bytes(data[start:end]).decode("utf-8", errors="replace")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)) or len(other) != len(self):
            return False
        return all(mine == theirs for mine, theirs in zip(self, other, strict=True))

    __hash__ = None  # mutable-sequence semantics, like a list

    def __repr__(self) -> str:
        return f"StringColumn({len(self)} strings)"


@dataclass(frozen=True)
class _Int8Codes:
    """Per-row symmetric int8 codes of the bank and what bounds their error.

    Row `i` is approximated by `scales[i] * codes[i]`; `residuals[i]` bounds the L2 norm of
    `row - approximation`, `code_norms[i]` that of the approximation, `max_norm` that of any row. The bounds
    are computed in float32 and inflated by `_BOUND_SLACK` to cover that arithmetic's rounding.
    """

    codes: torch.Tensor  # [N, D] int8
    scales: torch.Tensor  # [N] float32
    residuals: torch.Tensor  # [N] float32
    code_norms: torch.Tensor  # [N] float32
    max_norm: float

    @classmethod
    def build(cls, embeddings: torch.Tensor) -> _Int8Codes:
        count, dim = embeddings.shape
        codes = torch.empty(count, dim, dtype=torch.int8)
        scales, residuals, code_norms = (torch.empty(count) for _ in range(3))
        max_norm = 0.0
        for start in range(0, count, _BLOCK_ROWS):
            rows = embeddings[start : start + _BLOCK_ROWS].to(torch.float32, copy=True)  # changed in place below
            block = slice(start, start + len(rows))
            scales[block] = (rows.abs().amax(dim=1) / 127.0).clamp_min(1e-30)
            quantised = torch.round(rows / scales[block, None]).clamp_(-127, 127)
            codes[block] = quantised.to(torch.int8)
            approximation = quantised.mul_(scales[block, None])
            code_norms[block] = approximation.norm(dim=1)
            residuals[block] = rows.sub_(approximation).norm(dim=1)
            max_norm = max(max_norm, float(embeddings[block].float().norm(dim=1).max()))
        slack = 1.0 + _BOUND_SLACK
        return cls(codes, scales, residuals * slack, code_norms * slack, max_norm * slack)


def _int8_dot(queries: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Exact integer dot products `[B, N]` (int32) of int8 codes; float64 (exact for these integers) where
    this torch build has no int8 matrix product."""
    if hasattr(torch, "_int_mm"):
        try:
            return torch._int_mm(queries, codes.T)
        except RuntimeError:
            pass
    return (queries.double() @ codes.double().T).to(torch.int32)


def _query_codes(queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query as `scale * codes` (int8 `[B, D]`, float32 `[B]`) and the L2 norm of what that misses (`[B]`)."""
    scales = (queries.abs().amax(dim=1) / 127.0).clamp_min(1e-30)
    codes = torch.round(queries / scales[:, None]).clamp_(-127, 127)
    error = (queries.double() - codes.double() * scales.double()[:, None]).norm(dim=1)
    return codes.to(torch.int8), scales, error


def _read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        if not 0 < size <= 100_000_000:
            raise ValueError(f"{path} is not a safetensors file.")
        return json.loads(handle.read(size)), 8 + size


def _memory_map(path: str | os.PathLike, header: dict, data_start: int, name: str) -> np.ndarray:
    """A tensor of a safetensors file as a copy-on-write memory map (pages are read when touched)."""
    entry = header[name]
    dtype = np.dtype(_ST_DTYPES[entry["dtype"]])
    shape = tuple(int(side) for side in entry["shape"])
    begin, end = entry["data_offsets"]
    if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > os.path.getsize(path):
        raise ValueError(f"{path}: tensor {name!r} is truncated or corrupt.")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="c", offset=data_start + begin, shape=shape)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray | torch.Tensor], metadata: dict[str, str]) -> None:
    """The safetensors layout (length, JSON header, raw little-endian data), written block by block so that
    saving a bank never holds a second copy of it in memory."""
    header: dict[str, object] = {"__metadata__": metadata}
    arrays = {name: value.numpy() if isinstance(value, torch.Tensor) else value for name, value in tensors.items()}
    offset = 0
    for name, array in arrays.items():
        header[name] = {
            "dtype": _NP_TO_ST[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for array in arrays.values():
            flat = array.reshape(-1)
            step = max(1, _WRITE_BLOCK_BYTES // array.itemsize)
            for start in range(0, len(flat), step):
                handle.write(np.ascontiguousarray(flat[start : start + step], dtype=array.dtype.newbyteorder("<")))


class ExactCosineIndex:
    """Exact cosine top-k over fixed L2-normalised rows `[N, D]`: the search behind the bank's kNN vote and the
    OOD reference's neighbour distances.

    Small indexes are scanned in float32. Larger CPU indexes (`prefilter_min_rows` and up) are first scanned
    with int8 codes, built on the first search, then every row the scan's error bound cannot rule out is
    re-ranked in float32 (see the module docstring): the neighbours of a float32 scan at a quarter of its memory
    traffic, which is what a search right after a forward pass (which evicts the rows from cache) pays for.

    Args:
        rows: L2-normalised `[N, D]` rows, fp16 or float32 (possibly memory-mapped); never copied.
        prefilter_min_rows: the smallest CPU index searched through int8 codes.
        name: what error messages call the index.
    """

    def __init__(self, rows: torch.Tensor, prefilter_min_rows: int = 8192, name: str = "index"):
        self.rows = rows
        self.prefilter_min_rows = prefilter_min_rows
        self.name = name
        self._device_rows: dict[torch.device, torch.Tensor] = {}
        self._codes: _Int8Codes | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def dim(self) -> int:
        return self.rows.shape[1]

    def _rows_on(self, device: torch.device) -> torch.Tensor:
        """The rows on `device`, moved once: converted to float32 for a small index, kept as stored otherwise
        (scanned block by block in float32)."""
        with self._lock:
            if device not in self._device_rows:
                rows = self.rows.to(device)
                self._device_rows[device] = rows.float() if len(self) < self.prefilter_min_rows else rows
            return self._device_rows[device]

    def _int8_codes(self) -> _Int8Codes:
        with self._lock:
            if self._codes is None:
                self._codes = _Int8Codes.build(self.rows)
            return self._codes

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cosine top-k: `(similarities [B, k], indices [B, k])`, nearest first.

        The rows are scanned in blocks of `chunk_size` with a running merge, so memory stays `O(B * chunk_size)`
        for indexes of any size. The neighbours are those of a float32 scan (see the module
        docstring for how large CPU banks get there through int8 codes).
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise FeatureBankMismatchError(
                f"Query embeddings have shape {tuple(queries.shape)}; the {self.name} expects [B, {self.dim}]."
            )
        if not queries.is_floating_point():
            raise FeatureBankMismatchError(f"Query embeddings must be floating point, got dtype {queries.dtype}.")
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        k = min(int(k), len(self))
        queries = torch.nn.functional.normalize(queries.float(), dim=-1)
        if queries.device.type == "cpu" and len(self) >= self.prefilter_min_rows:
            similarities, indices = self._search_int8(queries, k, chunk_size)
        else:
            similarities, indices = self._search_float(queries, k, chunk_size or _SCAN_ROWS)
        return similarities.clamp(-1.0, 1.0), indices  # fp16 storage can round |cos| a hair past 1

    def _search_float(self, queries: torch.Tensor, k: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        matrix = self._rows_on(queries.device)
        best_sims = queries.new_full((queries.shape[0], 0), float("-inf"))
        best_idx = torch.empty((queries.shape[0], 0), dtype=torch.long, device=queries.device)
        for start in range(0, len(self), chunk_size):
            sims = queries @ matrix[start : start + chunk_size].float().T
            chunk_sims, chunk_idx = sims.topk(min(k, sims.shape[1]), dim=-1)
            merged_sims = torch.cat([best_sims, chunk_sims], dim=-1)
            merged_idx = torch.cat([best_idx, chunk_idx + start], dim=-1)
            best_sims, order = merged_sims.topk(min(k, merged_sims.shape[1]), dim=-1)
            best_idx = merged_idx.gather(-1, order)
        return best_sims, best_idx

    def _search_int8(self, queries: torch.Tensor, k: int, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """int8 scan, then a float32 re-rank of every row that the scan's error bound cannot rule out.

        With query `q ≈ q̂ = s c` and row `e ≈ ê` (int8 codes times a scale), one integer matrix product gives
        `q̂·ê` exactly, and `|q·e - q̂·ê| <= |q - q̂| |ê| + |q| |e - ê|` (per row); a float32 dot product is
        within `D u |q| |e|` of `q·e` (`u = 2**-24`). The rows with the best int8 scores are re-ranked first;
        any other row whose int8 score plus its bound stays below the k-th exact similarity found cannot
        enter the top `k`, and all the rest are re-ranked too.
        """
        codes = self._int8_codes()
        query_codes, query_scales, query_errors = _query_codes(queries)
        query_norms = queries.double().norm(dim=1)
        best_sims = queries.new_empty(len(queries), k)
        best_idx = torch.empty(len(queries), k, dtype=torch.long)
        block = chunk_size or len(self)
        group = max(1, (1 << 23) // len(self))  # queries scored together: at most ~32 MB of scores
        for first in range(0, len(queries), group):
            members = slice(first, min(first + group, len(queries)))
            dots = torch.cat(
                [_int8_dot(query_codes[members], codes.codes[row : row + block]) for row in range(0, len(self), block)],
                dim=1,
            )
            approx = dots.float() * query_scales[members, None] * codes.scales
            for offset, position in enumerate(range(len(queries))[members]):
                query_norm, query_error = float(query_norms[position]), float(query_errors[position])
                bounds = codes.residuals * query_norm + codes.code_norms * query_error
                rounding = self.dim * _UNIT_ROUNDOFF_FP32 * query_norm * codes.max_norm + 1e-6
                best_sims[position], best_idx[position] = self._rerank(
                    queries[position], approx[offset] + bounds, rounding, k
                )
        return best_sims, best_idx

    def _rerank(
        self, query: torch.Tensor, ceiling: torch.Tensor, rounding: float, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k of one query given `ceiling` `[N]`, a bound each row's float32 similarity stays below
        (up to `rounding`)."""
        first = ceiling.topk(min(len(self), k + _FIRST_CANDIDATES)).indices.sort().values
        first_sims = self.rows[first].float() @ query
        kth = float(first_sims.topk(k).values[-1])
        possible = ceiling >= kth - rounding
        possible[first] = False
        rest = possible.nonzero().squeeze(1)
        candidates = torch.cat([first, rest])
        sims = torch.cat([first_sims, self.rows[rest].float() @ query])
        top_sims, order = sims.topk(k)
        return top_sims, candidates[order]


class FeatureBank:
    """L2-normalised embeddings `[N, D]` with their grades `[N]`, and optional source and image ids.

    Args:
        embeddings: `[N, D]` float tensor; normalised on construction and stored as fp16 (half the size,
            and cosine similarity at fp16 precision does not change neighbours in practice).
        grades: `N` integer grades.
        sources, image_ids: optional per-row strings, returned with neighbours for audit trails.
        num_labels: number of grades (defaults to 5, ICDR).
        config_hash: the model's [`RetinaScanConfig.embedding_hash`] at build time.
        ood_reference: the [`OODReference`] of the training images, for `ood_scores` (optional).

    Embeddings holding NaN/inf or an all-zero row are refused: they would vote with meaningless neighbours.
    """

    # CPU banks with at least this many rows are searched through their int8 codes (plus an exact re-rank);
    # below it a float32 scan is as fast and needs no codes.
    PREFILTER_MIN_ROWS = 8192

    def __init__(
        self,
        embeddings: torch.Tensor,
        grades: torch.Tensor | Sequence[int],
        *,
        sources: Sequence[str] | None = None,
        image_ids: Sequence[str] | None = None,
        num_labels: int = 5,
        config_hash: str | None = None,
        ood_reference: OODReference | None = None,
    ):
        embeddings = torch.as_tensor(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise InvalidArtefactError(
                f"Bank embeddings must be a non-empty [N, D] tensor, got shape {tuple(embeddings.shape)}.",
                field="embeddings",
            )
        if not embeddings.is_floating_point():
            raise FeatureBankMismatchError(f"Bank embeddings must be floating point, got dtype {embeddings.dtype}.")
        self._set_rows(_normalised_rows(embeddings), grades, sources, image_ids, num_labels, config_hash, ood_reference)

    def _set_rows(
        self,
        embeddings: torch.Tensor,
        grades: torch.Tensor | Sequence[int],
        sources: Sequence[str] | None,
        image_ids: Sequence[str] | None,
        num_labels: int,
        config_hash: str | None,
        ood_reference: OODReference | None,
    ) -> None:
        """Validate and keep L2-normalised fp16 rows (normalised here, or memory-mapped from a bank file)."""
        check_number("num_labels", num_labels, integer=True, low=2)
        grades = torch.as_tensor(grades)
        if grades.is_floating_point() or grades.dtype == torch.bool:
            raise InvalidArtefactError(f"Bank grades must be integers, got dtype {grades.dtype}.", field="grades")
        grades = grades.long().reshape(-1)
        if grades.shape[0] != embeddings.shape[0]:
            raise InvalidArtefactError(
                f"{embeddings.shape[0]} embeddings but {grades.shape[0]} grades.", field="grades"
            )
        if grades.min() < 0 or grades.max() >= num_labels:
            raise InvalidArtefactError(
                f"Bank grades must lie in [0, {num_labels - 1}], got {grades.min()}..{grades.max()}.", field="grades"
            )
        for name, values in (("sources", sources), ("image_ids", image_ids)):
            strings = isinstance(values, StringColumn) or all(isinstance(value, str) for value in values or ())
            if values is not None and (len(values) != grades.shape[0] or not strings):
                raise InvalidArtefactError(
                    f"{name} must hold one string per bank row ({grades.shape[0]}), got {len(values)} entries.",
                    field=name,
                )
        self.embeddings = embeddings
        self.grades = grades.cpu()
        self.sources = sources if sources is None or isinstance(sources, StringColumn) else list(sources)
        self.image_ids = image_ids if image_ids is None or isinstance(image_ids, StringColumn) else list(image_ids)
        self.num_labels = num_labels
        self.config_hash = config_hash
        self.ood_reference = ood_reference
        self.index = ExactCosineIndex(embeddings, self.PREFILTER_MIN_ROWS, name="feature bank")

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def __repr__(self) -> str:
        counts = torch.bincount(self.grades, minlength=self.num_labels).tolist()
        return f"FeatureBank(size={len(self)}, dim={self.dim}, grades={counts})"

    def check_compatible(
        self,
        embedding_dim: int,
        config_hash: str | None = None,
        dtype: torch.dtype | None = None,
        num_labels: int | None = None,
    ) -> None:
        """Raise [`FeatureBankMismatchError`] if this bank cannot serve a model of `embedding_dim`, `dtype` and
        `num_labels` grades.

        The search runs in float32, so any floating model dtype works with the fp16 bank; a model whose
        embeddings are not floating point (an integer-quantised export) cannot be searched. A bank voting over
        another number of grades would return scores of the wrong length (or grades the model cannot name).
        """
        if num_labels is not None and num_labels != self.num_labels:
            raise FeatureBankMismatchError(
                f"Feature bank votes over {self.num_labels} grades but the model has {num_labels} grades."
            )
        if dtype is not None and not dtype.is_floating_point:
            raise FeatureBankMismatchError(
                f"Feature bank holds {self.embeddings.dtype} embeddings; the model computes in {dtype}, "
                "which cannot be compared by cosine similarity."
            )
        if embedding_dim != self.dim:
            raise FeatureBankMismatchError(
                f"Feature bank holds {self.dim}-d embeddings but the model produces {embedding_dim}-d embeddings."
            )
        if self.ood_reference is not None and self.ood_reference.dim != embedding_dim:
            raise FeatureBankMismatchError(
                f"Feature bank's OOD reference holds {self.ood_reference.dim}-d image embeddings but the model "
                f"produces {embedding_dim}-d ones."
            )
        if config_hash is not None and self.config_hash is not None and config_hash != self.config_hash:
            logger.warning(
                f"Feature bank was built for embedding config {self.config_hash}, the model has {config_hash}: "
                "neighbours may be meaningless. Rebuild the bank with the current model."
            )

    @property
    def prefilter_min_rows(self) -> int:
        """Rows from which a CPU search goes through int8 codes (see [`ExactCosineIndex`]); settable."""
        return self.index.prefilter_min_rows

    @prefilter_min_rows.setter
    def prefilter_min_rows(self, rows: int) -> None:
        self.index.prefilter_min_rows = rows

    def search(self, queries: torch.Tensor, k: int, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cosine top-k over the bank: `(similarities [B, k], indices [B, k])`, nearest first (see
        [`ExactCosineIndex.search`])."""
        return self.index.search(queries, k, chunk_size)

    def knn(self, queries: torch.Tensor, k: int = 10, weighting: str = "distance") -> NeighborResult:
        """Vote among the `k` nearest bank rows; `weighting` is `"uniform"` or `"distance"`.

        `"distance"` weights a neighbour by `1 / (cosine distance + 1e-6)`, so an (almost) identical image
        decides on its own, while distant neighbours barely count.
        """
        if weighting not in ("uniform", "distance"):
            raise ValueError(f"weighting must be 'uniform' or 'distance', got {weighting!r}.")
        similarities, indices = self.search(queries, k)
        if weighting == "uniform":
            weights = torch.ones_like(similarities)
        else:
            weights = 1.0 / ((1.0 - similarities).clamp_min(0.0) + 1e-6)
        neighbour_grades = self.grades.to(indices.device)[indices]
        votes = torch.zeros(queries.shape[0], self.num_labels, device=indices.device)
        votes.scatter_add_(1, neighbour_grades, weights)
        return NeighborResult(scores=votes / votes.sum(-1, keepdim=True), indices=indices, similarities=similarities)

    def ood_scores(self, image_features: torch.Tensor) -> torch.Tensor | None:
        """Out-of-distribution score per image `[B]` from the backbone's `image_features` (see [`OODReference`]);
        `None` for a bank without a reference."""
        return None if self.ood_reference is None else self.ood_reference.scores(image_features)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `feature_bank.safetensors` into `save_directory` atomically (temp file, then rename), block by
        block so that saving needs no second copy of the bank in memory."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": _FORMAT,
            "version": _VERSION,
            "dim": str(self.dim),
            "num_labels": str(self.num_labels),
            "normalized": "l2",
            "dtype": str(self.embeddings.dtype).removeprefix("torch."),
            "config_hash": self.config_hash or "",
        }
        tensors: dict[str, np.ndarray | torch.Tensor] = {"embeddings": self.embeddings, "grades": self.grades}
        if self.ood_reference is not None:
            metadata["ood_k"], metadata["ood_scale"] = str(self.ood_reference.k), repr(self.ood_reference.scale)
            tensors["ood_features"] = self.ood_reference.features.contiguous()
        for name, values in (("image_ids", self.image_ids), ("sources", self.sources)):
            if values is not None:
                column = StringColumn.from_strings(values)
                tensors[f"{name}.bytes"], tensors[f"{name}.offsets"] = column.data, column.offsets
        target = directory / FEATURE_BANK_NAME
        temporary = directory / f".{FEATURE_BANK_NAME}.{os.getpid()}.tmp"
        try:
            _write_safetensors(temporary, tensors, metadata)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        if target.stat().st_size > _HUB_RECOMMENDED_FILE_BYTES:
            logger.warning(
                f"{target} is {target.stat().st_size / 1e9:.1f} GB, above the Hub's recommended 20 GB per file: "
                "keep a bank this large outside the model repository."
            )
        return target

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> FeatureBank:
        """Read a bank file (safetensors only: nothing is unpickled), memory-mapped, refusing values that cannot
        be served with an error naming the file and the field.

        Rows stored L2-normalised in fp16 (every bank `save_pretrained` wrote) are used in place, from the page
        cache; anything else is checked and normalised into memory as on construction.
        """
        try:
            with safe_open(str(path), framework="pt") as handle:  # validates the header and the data layout
                metadata = handle.metadata() or {}
                if metadata.get("format") != _FORMAT:
                    raise InvalidArtefactError(
                        f"not a RetinaScan feature bank (format={metadata.get('format')!r}).", field="format"
                    )
                stored = set(handle.keys())
                missing = sorted({"embeddings", "grades"} - stored)
                if missing:
                    raise InvalidArtefactError(f"missing tensor(s) {missing}.", field=missing[0])
                header, data_start = _read_safetensors_header(path)
                if header["embeddings"]["dtype"] == "F16":
                    embeddings = torch.from_numpy(_memory_map(path, header, data_start, "embeddings"))
                else:
                    embeddings = handle.get_tensor("embeddings")
                grades = handle.get_tensor("grades")
                ood_features = handle.get_tensor("ood_features") if "ood_features" in stored else None
        except SafetensorError as error:
            raise OSError(f"{path} is not a readable safetensors file: {error}") from error
        except InvalidArtefactError as error:
            raise error.in_file(path) from error
        declared_dtype = metadata.get("dtype")
        if declared_dtype and declared_dtype != str(embeddings.dtype).removeprefix("torch."):
            raise FeatureBankMismatchError(
                f"{path} declares dtype {declared_dtype} but stores {embeddings.dtype} embeddings."
            )
        try:
            if embeddings.ndim != 2 or _metadata_number(metadata, "dim", None, integer=True) not in (
                None,
                embeddings.shape[-1],
            ):
                raise FeatureBankMismatchError(
                    f"{path} declares dim {metadata.get('dim')} but stores embeddings of shape "
                    f"{tuple(embeddings.shape)}."
                )
            reference = None
            if ood_features is not None:
                reference = OODReference(
                    ood_features,
                    k=_metadata_number(metadata, "ood_k", None, integer=True),
                    scale=_metadata_number(metadata, "ood_scale", None, integer=False),
                )
            settings = {
                "sources": cls._read_strings(path, header, data_start, metadata, "sources"),
                "image_ids": cls._read_strings(path, header, data_start, metadata, "image_ids"),
                "num_labels": _metadata_number(metadata, "num_labels", 5, integer=True),
                "config_hash": metadata.get("config_hash") or None,
                "ood_reference": reference,
            }
            if embeddings.dtype == torch.float16 and len(embeddings) and _rows_are_unit(embeddings):
                bank = cls.__new__(cls)
                bank._set_rows(embeddings, grades, **settings)
                return bank
            return cls(embeddings, grades, **settings)
        except InvalidArtefactError as error:
            raise error.in_file(path) from error

    @staticmethod
    def _read_strings(
        path: str | os.PathLike, header: dict, data_start: int, metadata: dict, name: str
    ) -> Sequence[str] | None:
        """Per-row strings: UTF-8 bytes and offsets tensors (version 2), or a JSON list in the metadata (1)."""
        listed = _metadata_strings(metadata, name)
        if f"{name}.bytes" not in header:
            return listed
        if listed is not None:
            raise InvalidArtefactError(f"{name} are stored twice (metadata and tensors).", field=name)
        try:
            data = _memory_map(path, header, data_start, f"{name}.bytes")
            offsets = np.array(_memory_map(path, header, data_start, f"{name}.offsets"))
            column = StringColumn(data, offsets)
            decoder = codecs.getincrementaldecoder("utf-8")()
            for start in range(0, len(data), _WRITE_BLOCK_BYTES):  # fails here, not in a later pipeline call
                decoder.decode(bytes(data[start : start + _WRITE_BLOCK_BYTES]))
            decoder.decode(b"", final=True)
        except (ValueError, KeyError, UnicodeDecodeError) as error:
            raise InvalidArtefactError(f"the {name} strings are corrupt ({error}).", field=name) from error
        return column

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        subfolder: str = "",
        missing_ok: bool = False,
    ) -> FeatureBank | None:
        """Load the bank of a model folder or Hub repo, resolved like the model's own weights.

        A folder or repo revision without a bank raises `OSError`, or, with `missing_ok=True`, returns `None` (the
        pipeline then grades with the ordinal head and says so). "Without a bank" means known to be absent: the
        folder lacks the file, or the Hub answered that the revision has none (now or on an earlier online visit,
        which the cache remembers). When that cannot be known (a connection error, the Hub failing, offline mode
        with the file not cached) [`FeatureBankUnavailableError`] is raised even with `missing_ok=True`, so a
        network problem never silently changes how images are graded.
        """
        source = str(pretrained_model_name_or_path)
        if os.path.isdir(source):
            path = os.path.join(source, subfolder, FEATURE_BANK_NAME)
            if os.path.isfile(path):
                return cls.from_file(path)
        else:
            path = _download(source, revision, cache_dir, token, local_files_only, subfolder)
            if path is not None:
                return cls.from_file(path)
        if missing_ok:
            return None
        raise OSError(f"{bank_location(source, revision, subfolder)} has no {FEATURE_BANK_NAME}.")


def _download(
    repo_id: str,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
    local_files_only: bool,
    subfolder: str,
) -> str | None:
    """The cached path of a repo's bank file; `None` if the Hub says (or said) the revision has none.

    huggingface_hub reports a file the Hub does not have as `RemoteEntryNotFoundError`, and every failure to ask
    (connection, server error, offline) as another `OSError`; only the first is an absent bank. A 404 seen on an
    earlier online visit is remembered in the cache (`.no_exist`), which lets offline mode tell the two apart too.
    """
    try:
        return hf_hub_download(
            repo_id,
            FEATURE_BANK_NAME,
            subfolder=subfolder or None,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only or is_offline_mode(),
        )
    except RemoteEntryNotFoundError:
        return None
    except OSError as error:
        filename = f"{subfolder}/{FEATURE_BANK_NAME}" if subfolder else FEATURE_BANK_NAME
        if try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision) is _CACHED_NO_EXIST:
            return None
        raise FeatureBankUnavailableError(
            f"Could not check whether {bank_location(repo_id, revision, subfolder)} has a {FEATURE_BANK_NAME}: "
            f"{error} Connect to the Hub (or download the file into the cache), or pass feature_bank=False to the "
            "pipeline to grade without the kNN vote."
        ) from error


def _metadata_number(metadata: dict[str, str], key: str, default, *, integer: bool):
    """A number stored as a metadata string (safetensors metadata is `str -> str`); `default` when absent."""
    raw = metadata.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise InvalidArtefactError(f"metadata {key} must be {kind}, got {raw!r}.", field=key) from None


def _metadata_strings(metadata: dict[str, str], key: str) -> list[str] | None:
    """A JSON list of strings stored as metadata; `None` when absent."""
    if key not in metadata:
        return None
    try:
        values = json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise InvalidArtefactError(f"metadata {key} is not valid JSON ({error}).", field=key) from None
    if not isinstance(values, list):
        raise InvalidArtefactError(f"metadata {key} must be a JSON list of strings.", field=key)
    return values


def _row_blocks(rows: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, len(rows), _BLOCK_ROWS):
        yield rows[start : start + _BLOCK_ROWS]


def _normalised_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """`embeddings` L2-normalised into fp16, block by block (no full-size float32 copy of a large bank).

    NaN/inf values and all-zero rows are refused with an [`InvalidArtefactError`] counting them over the whole
    tensor: a zero vector has no direction to compare by cosine.
    """
    normalised = torch.empty(embeddings.shape, dtype=torch.float16)
    non_finite, zero_rows = 0, []
    for start in range(0, len(embeddings), _BLOCK_ROWS):
        block = embeddings[start : start + _BLOCK_ROWS].detach().float().cpu()
        non_finite += int((~torch.isfinite(block)).sum())
        norms = block.norm(dim=-1)
        zero_rows.extend((torch.nonzero(norms <= 1e-6).flatten() + start).tolist())
        normalised[start : start + len(block)] = torch.nn.functional.normalize(block, dim=-1)
    if non_finite:
        raise InvalidArtefactError(
            f"embeddings holds {non_finite} non-finite value(s) (NaN or inf) among {embeddings.numel()}.",
            field="embeddings",
        )
    if zero_rows:
        raise InvalidArtefactError(
            f"embeddings has {len(zero_rows)} all-zero row(s) of {embeddings.shape[0]} (first: row {zero_rows[0]}); "
            "a zero vector has no direction to compare.",
            field="embeddings",
        )
    return normalised


def _rows_are_unit(rows: torch.Tensor) -> bool:
    """Whether every row has an L2 norm within `_NORM_TOLERANCE` of 1 (a NaN or Inf row is not)."""
    for block in _row_blocks(rows):
        deviation = (block.float().norm(dim=1) - 1.0).abs()
        if not bool((deviation <= _NORM_TOLERANCE).all()):
            return False
    return True


__all__ = [
    "FEATURE_BANK_NAME",
    "OOD_NEIGHBORS",
    "OOD_REFERENCE_ROWS",
    "FeatureBank",
    "FeatureBankMismatchError",
    "FeatureBankUnavailableError",
    "NeighborResult",
    "OODReference",
    "StringColumn",
    "bank_location",
]
