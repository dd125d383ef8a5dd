"""Feature bank: training-set embeddings and grades, stored beside the weights, voted on by exact kNN.

The bank is what the pipeline's default decision consults: the grades of the training images nearest
to a query in the model's embedding space. It is stored as `feature_bank.safetensors` (fp16 embeddings,
int64 grades, JSON metadata) and resolved exactly like transformers resolves weights: a local folder, or
a Hub repo id through the cache (revision, offline mode, token).

The file also carries an [`OODReference`]: CLIP image embeddings of (a sample of) the training images, with
their own leave-one-out neighbour distance, from which `ood_scores` says how far a new image lies from
everything the model was trained on.

This file is copied verbatim into model repositories as remote code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import RemoteEntryNotFoundError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from .validation_retinascan import InvalidArtefactError, check_finite_tensor, check_number

# A child of transformers' root logger, so that `transformers.logging.set_verbosity_*` and TRANSFORMERS_VERBOSITY
# apply to it (a logger named plainly `__name__` would sit outside transformers' hierarchy and ignore them).
logger = logging.get_logger(f"transformers.{__name__}")

FEATURE_BANK_NAME = "feature_bank.safetensors"
_FORMAT = "retinascan-feature-bank"
_VERSION = "1"
# Neighbours whose mean distance makes an OOD score, and the most training images the reference keeps: a fixed
# random sample bounds its size and cost (an exact search over 4,096 rows) whatever the training set's size.
OOD_NEIGHBORS = 10
OOD_REFERENCE_ROWS = 4096
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
        return self._mean_distance(queries, self.k) / self.scale


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
        check_number("num_labels", num_labels, integer=True, low=2)
        _check_rows("embeddings", embeddings)
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
            if values is not None and (len(values) != grades.shape[0] or not all(isinstance(v, str) for v in values)):
                raise InvalidArtefactError(
                    f"{name} must hold one string per bank row ({grades.shape[0]}), got {len(values)} entries.",
                    field=name,
                )
        normalised = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=-1)
        self.embeddings = normalised.to(torch.float16)
        self.grades = grades.cpu()
        self.sources = list(sources) if sources is not None else None
        self.image_ids = list(image_ids) if image_ids is not None else None
        self.num_labels = num_labels
        self.config_hash = config_hash
        self.ood_reference = ood_reference
        self._search_matrix: torch.Tensor | None = None

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

    def _matrix(self, device: torch.device) -> torch.Tensor:
        # fp16 matmuls are slow or unsupported on CPU; search in fp32, converted once and cached.
        if self._search_matrix is None or self._search_matrix.device != device:
            self._search_matrix = self.embeddings.to(device=device, dtype=torch.float32)
        return self._search_matrix

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int, chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cosine top-k: `(similarities [B, k], indices [B, k])`, nearest first.

        The bank is scanned in chunks with a running top-k merge, so memory stays `O(B * chunk_size)` for
        banks of any size.
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise FeatureBankMismatchError(
                f"Query embeddings have shape {tuple(queries.shape)}; the feature bank expects [B, {self.dim}]."
            )
        if not queries.is_floating_point():
            raise FeatureBankMismatchError(f"Query embeddings must be floating point, got dtype {queries.dtype}.")
        k = min(k, len(self))
        matrix = self._matrix(queries.device)
        queries = torch.nn.functional.normalize(queries.float(), dim=-1)
        best_sims = queries.new_full((queries.shape[0], 0), float("-inf"))
        best_idx = torch.empty((queries.shape[0], 0), dtype=torch.long, device=queries.device)
        for start in range(0, len(self), chunk_size):
            sims = queries @ matrix[start : start + chunk_size].T
            chunk_sims, chunk_idx = sims.topk(min(k, sims.shape[1]), dim=-1)
            merged_sims = torch.cat([best_sims, chunk_sims], dim=-1)
            merged_idx = torch.cat([best_idx, chunk_idx + start], dim=-1)
            best_sims, order = merged_sims.topk(min(k, merged_sims.shape[1]), dim=-1)
            best_idx = merged_idx.gather(-1, order)
        return best_sims.clamp(-1.0, 1.0), best_idx  # fp16 storage can round |cos| a hair past 1

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
        """Write `feature_bank.safetensors` into `save_directory` atomically (temp file, then rename)."""
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
        tensors = {"embeddings": self.embeddings.contiguous(), "grades": self.grades.contiguous()}
        if self.ood_reference is not None:
            metadata["ood_k"], metadata["ood_scale"] = str(self.ood_reference.k), repr(self.ood_reference.scale)
            tensors["ood_features"] = self.ood_reference.features.contiguous()
        if self.sources is not None:
            metadata["sources"] = json.dumps(self.sources)
        if self.image_ids is not None:
            metadata["image_ids"] = json.dumps(self.image_ids)
        target = directory / FEATURE_BANK_NAME
        temporary = directory / f".{FEATURE_BANK_NAME}.{os.getpid()}.tmp"
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, target)
        return target

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> FeatureBank:
        """Read a bank file (safetensors only: nothing is unpickled), refusing values that cannot be served
        with an error naming the file and the field."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != _FORMAT:
                    raise InvalidArtefactError(
                        f"not a RetinaScan feature bank (format={metadata.get('format')!r}).", field="format"
                    )
                stored = set(handle.keys())
                missing = sorted({"embeddings", "grades"} - stored)
                if missing:
                    raise InvalidArtefactError(f"missing tensor(s) {missing}.", field=missing[0])
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
            if _metadata_number(metadata, "dim", embeddings.shape[-1], integer=True) != embeddings.shape[-1]:
                raise FeatureBankMismatchError(
                    f"{path} declares dim {metadata['dim']} but stores {embeddings.shape[-1]}-d embeddings."
                )
            reference = None
            if ood_features is not None:
                reference = OODReference(
                    ood_features,
                    k=_metadata_number(metadata, "ood_k", None, integer=True),
                    scale=_metadata_number(metadata, "ood_scale", None, integer=False),
                )
            return cls(
                embeddings,
                grades,
                sources=_metadata_strings(metadata, "sources"),
                image_ids=_metadata_strings(metadata, "image_ids"),
                num_labels=_metadata_number(metadata, "num_labels", 5, integer=True),
                config_hash=metadata.get("config_hash") or None,
                ood_reference=reference,
            )
        except InvalidArtefactError as error:
            raise error.in_file(path) from error

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


__all__ = [
    "FEATURE_BANK_NAME",
    "OOD_NEIGHBORS",
    "OOD_REFERENCE_ROWS",
    "FeatureBank",
    "FeatureBankMismatchError",
    "FeatureBankUnavailableError",
    "NeighborResult",
    "OODReference",
    "bank_location",
]
