"""RetinaScan model: a (frozen) CLIP image tower with projection, text-prototype and CORAL ordinal heads.

Reads top to bottom: losses, small head modules, the output dataclass, then the public model. The
`forward_features` / `forward_head` seam (timm's) separates the frozen backbone from the trainable
heads, so training can compute backbone features once and cache them.

This file is copied verbatim into model repositories as remote code (relative imports only).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import chain

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput, logging

from .configuration_retinascan import RetinaScanConfig
from .feature_bank import FeatureBank, NeighborResult
from .validation_retinascan import InvalidArtefactError, check_finite_tensor

# Under transformers' logger tree, so `transformers.logging.set_verbosity_*` governs these messages too.
logger = logging.get_logger(f"transformers.{__name__}")

DECISION_MODES: tuple[str, ...] = ("knn", "ordinal", "prototype")

# The Auto classes a saved folder maps to this model (`auto_map`), for remote code, and that `register()` maps
# `model_type="retinascan"` to for the installed package. The model is an image classifier over the ICDR grades.
AUTO_MODEL_CLASSES: tuple[str, ...] = ("AutoModel", "AutoModelForImageClassification")


def ordinal_levels(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Grade `y` -> CORAL targets `[y > 0, y > 1, ..., y > K-2]`, shape `[B, K-1]`, float."""
    thresholds = torch.arange(num_labels - 1, device=labels.device)
    return (labels.unsqueeze(-1) > thresholds).float()


def coral_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CORAL loss (Cao et al., 2020): mean over the batch of the summed binary cross-entropies of the K-1 tasks."""
    levels = ordinal_levels(labels, logits.shape[-1] + 1)
    log_p = F.logsigmoid(logits)
    per_task = log_p * levels + (log_p - logits) * (1.0 - levels)
    return -per_task.sum(dim=-1).mean()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Multi-class focal loss (Lin et al., 2017): cross-entropy scaled by `(1 - p_true)^gamma`.

    Down-weights the many easy "no DR" images so the rare severe grades shape the prototypes.
    """
    log_p_true = F.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (-((1.0 - log_p_true.exp()) ** gamma) * log_p_true).mean()


def ordinal_probabilities(
    logits: torch.Tensor, temperature: float = 1.0, thresholds: torch.Tensor | None = None
) -> torch.Tensor:
    """CORAL logits `[B, K-1]` -> grade probabilities `[B, K]` that are non-negative and sum to 1.

    `P(y > k) = sigmoid(logit_k / temperature - threshold_k)`. Shifting by the decision thresholds makes the
    decision of [`ordinal_grades`] the median of this distribution, so reported scores never contradict the
    reported grade. `P(y > k)` is made non-increasing in `k` (a running minimum) before differencing: CORAL
    is rank-consistent at its optimum, but an under-trained head can violate it slightly, and negative
    "probabilities" must never reach a user.
    """
    scaled = logits.float() / temperature
    if thresholds is not None:
        scaled = scaled - thresholds.to(scaled)
    exceed = torch.sigmoid(scaled).cummin(dim=-1).values
    ones = exceed.new_ones((*exceed.shape[:-1], 1))
    zeros = exceed.new_zeros((*exceed.shape[:-1], 1))
    cumulative = torch.cat([ones, exceed, zeros], dim=-1)
    return cumulative[..., :-1] - cumulative[..., 1:]


def ordinal_grade_logits(logits: torch.Tensor, temperature: float, thresholds: torch.Tensor) -> torch.Tensor:
    """CORAL logits `[B, K-1]` -> grade logits `[B, K]` whose argmax is the ordinal decision ([`ordinal_grades`]).

    Grade `k`'s logit is the sum of the first `k` calibrated task logits `logit_j / temperature - threshold_j`
    (grade 0's is 0), after a running minimum makes them non-increasing (the same rank-consistency repair as
    [`ordinal_probabilities`]). Consecutive grade logits then differ by one task logit, so `softmax` of these logits
    is the adjacent-categories ordinal model (`P(k) / P(k-1) = exp(task logit k-1)`), and the sums rise while tasks
    pass and fall after the first failing one: their argmax is the number of leading passes, the ordinal grade.
    This is why `RetinaScanOutput.logits` uses them: anything that takes `argmax(logits)` (the image-classification
    pipeline, `Trainer.predict`, `evaluate`) agrees with the model's ordinal decision. Exact up to float rounding:
    a task logit within about 1e-7 (relative) of its threshold can tie with the previous grade.
    """
    steps = (logits.float() / temperature - thresholds.to(logits.device)).cummin(dim=-1).values
    return torch.cat([steps.new_zeros((*steps.shape[:-1], 1)), steps.cumsum(dim=-1)], dim=-1)


def ordinal_grades(logits: torch.Tensor, temperature: float, thresholds: torch.Tensor) -> torch.Tensor:
    """Grade = number of leading CORAL tasks whose scaled logit exceeds its threshold, `[B]`.

    Counting only the *leading* passes keeps the decision consistent with [`ordinal_probabilities`].
    """
    passes = (logits.float() / temperature > thresholds).long()
    return passes.cumprod(dim=-1).sum(dim=-1)


class RetinaScanProjectionHead(nn.Module):
    """Linear-ReLU-Dropout-Linear from CLIP image features into the joint (text) embedding space."""

    def __init__(self, dim: int, hidden_size: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_size, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(features))))


class RetinaScanCoralHead(nn.Module):
    """CORAL ordinal head: one shared weight vector and K-1 independent biases (rank-consistent)."""

    def __init__(self, dim: int, num_tasks: int):
        super().__init__()
        self.linear = nn.Linear(dim, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings) + self.bias


@dataclass
class RetinaScanOutput(ModelOutput):
    """Output of [`RetinaScanModel`]. With `return_dict=False` the model returns `to_tuple()`: the fields below that
    are not `None`, in this order (`loss` first when given, then `logits`, as image classifiers in transformers do).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            `coral_loss_weight * CORAL + prototype_loss_weight * focal(prototype_logits)`.
        logits (`torch.FloatTensor` of shape `[B, num_labels]`):
            Grade logits for image-classification tooling (see [`ordinal_grade_logits`]): their argmax is
            `predicted_grade`, and their softmax the adjacent-categories form of the calibrated ordinal head. The
            calibrated CORAL grade distribution itself is `probs`.
        ordinal_logits (`torch.FloatTensor` of shape `[B, num_labels - 1]`):
            CORAL logits for "grade > k", k = 0..K-2 (uncalibrated).
        prototype_logits (`torch.FloatTensor` of shape `[B, num_labels]`):
            Cosine similarity to each grade's text prototype divided by `prototype_temperature`.
        probs (`torch.FloatTensor` of shape `[B, num_labels]`):
            Grade probabilities from the calibrated ordinal head (temperature and thresholds); rows sum to 1,
            and `predicted_grade` is their median.
        embeddings (`torch.FloatTensor` of shape `[B, D]`):
            L2-normalised projection output: what the feature bank stores and searches.
        predicted_grade (`torch.LongTensor` of shape `[B]`):
            Ordinal decision with the calibrated temperature and thresholds from the config.
        image_features (`torch.FloatTensor` of shape `[B, D]`):
            The backbone's (CLIP) image features, the input of `forward_head`; what training caches.
        hidden_states (`tuple[torch.FloatTensor]`, *optional*, returned with `output_hidden_states=True`):
            CLIP vision tower's hidden states (embeddings, then one per layer), each `[B, tokens, hidden_size]`.
            `None` when the model is given `image_features` (the backbone does not run).
        attentions (`tuple[torch.FloatTensor]`, *optional*, returned with `output_attentions=True`):
            CLIP vision tower's attention weights, one `[B, heads, tokens, tokens]` per layer. Only the `"eager"`
            attention implementation computes them (transformers returns none for `"sdpa"`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    ordinal_logits: torch.FloatTensor | None = None
    prototype_logits: torch.FloatTensor | None = None
    probs: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    predicted_grade: torch.LongTensor | None = None
    image_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# Split-conformal grade sets. A grade set is a contiguous interval of grades grown from the decided grade, one
# neighbouring grade per step, always towards the more probable neighbour (ties: the more severe one, the safer
# mistake in screening). The nonconformity score of a true grade is 0 if it is the decided grade (every set holds
# that), else the probability mass of the first interval that contains it plus CONFORMAL_STEP_PENALTY per step:
# the penalty breaks the ties that zero-probability grades create (a unanimous kNN vote has mass 1 at every step),
# so among equally massive intervals the smallest is preferred. Calibration keeps the sorted scores of the
# validation images; at call time the ceil((n + 1) * coverage)-th smallest is the threshold, which is what lets
# any coverage be asked for. Coverage is at least the target; when the decided grade alone is right more often
# than the target asks, sets are single grades and coverage is that accuracy (sets are never empty).
CONFORMAL_STEP_PENALTY = 1e-6
MAX_CONFORMAL_SCORES = 1000  # order statistics kept in the config; more validation images are summarised


def grade_interval_growth(scores: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nested intervals grown from the grades `start` `[B]` over distributions `scores` `[B, K]`.

    Returns `bounds` `[B, K, 2]` (inclusive lowest and highest grade after step `j` = 0..K-1) and the
    penalised `mass` `[B, K]` of each interval, strictly increasing in `j`.
    """
    scores = scores.double()  # the step penalty must stay resolvable next to a mass of 1
    num_labels = scores.shape[-1]
    lower, upper = start.long().clone(), start.long().clone()
    mass = scores.gather(-1, start.long()[:, None]).squeeze(-1)
    bounds, masses = [torch.stack([lower, upper], -1)], [mass]
    exhausted = scores.new_full(mass.shape, -1.0)
    for step in range(1, num_labels):
        below = torch.where(lower > 0, scores.gather(-1, (lower - 1).clamp_min(0)[:, None]).squeeze(-1), exhausted)
        above = torch.where(
            upper < num_labels - 1,
            scores.gather(-1, (upper + 1).clamp_max(num_labels - 1)[:, None]).squeeze(-1),
            exhausted,
        )
        go_up = above >= below
        upper, lower = torch.where(go_up, upper + 1, upper), torch.where(go_up, lower, lower - 1)
        mass = mass + torch.where(go_up, above, below)
        bounds.append(torch.stack([lower, upper], -1))
        masses.append(mass + step * CONFORMAL_STEP_PENALTY)
    return torch.stack(bounds, 1), torch.stack(masses, 1)


def nonconformity_scores(scores: torch.Tensor, grades: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Nonconformity score `[B]` of the true `labels` under decisions (`scores` `[B, K]`, decided `grades`)."""
    bounds, mass = grade_interval_growth(scores, grades)
    labels = labels.long().to(bounds.device)[:, None]
    contains = (bounds[..., 0] <= labels) & (labels <= bounds[..., 1])
    step = contains.float().argmax(-1, keepdim=True)
    # The decided grade is in every set: scoring it 0 keeps calibration from counting it as a miss (which would
    # inflate the threshold, hence the sets, beyond the coverage asked for).
    return torch.where(step == 0, 0.0, mass.gather(-1, step)).squeeze(-1)


def summarise_conformal_scores(scores: torch.Tensor, max_size: int = MAX_CONFORMAL_SCORES) -> list[float]:
    """The sorted scores to store, at most `max_size` of them: entry `i` of `m` is the order statistic of rank
    `ceil((i + 1) * n / m)`, never below the one it stands for, so thresholds read from it stay conservative."""
    ordered = scores.double().sort().values
    n, kept = len(ordered), min(len(ordered), max_size)
    ranks = [-(-(index + 1) * n // kept) for index in range(kept)]  # ceil division
    return [float(ordered[rank - 1]) for rank in ranks]


def conformal_threshold(scores: list[float], calibration_size: int, coverage: float) -> float:
    """The split-conformal quantile for `coverage`: the `ceil((n + 1) * coverage)`-th smallest of `n` calibration
    scores (read from the summary of [`summarise_conformal_scores`]); infinite (every grade) when that rank
    exceeds `n`, i.e. when the calibration set is too small for the coverage asked."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}.")
    rank = math.ceil((calibration_size + 1) * coverage)
    if rank > calibration_size:
        return math.inf
    return scores[(rank - 1) * len(scores) // calibration_size]


def conformal_grade_sets(scores: torch.Tensor, grades: torch.Tensor, threshold: float) -> torch.Tensor:
    """Inclusive `[lowest, highest]` grade `[B, 2]` of each image's set: the largest grown interval whose
    penalised mass is at most `threshold` (at least the decided grade itself)."""
    bounds, mass = grade_interval_growth(scores, grades)
    steps = (mass <= threshold).sum(-1).clamp_min(1) - 1  # mass increases with the step: a prefix qualifies
    return bounds.gather(1, steps[:, None, None].expand(-1, 1, 2)).squeeze(1)


@dataclass
class GradeDecision:
    """What one decision mode concluded for a batch (see [`decide`]).

    Args:
        scores (`torch.FloatTensor` of shape `[B, num_labels]`):
            Grade probabilities (kNN: weighted vote shares); rows sum to 1.
        grades (`torch.LongTensor` of shape `[B]`):
            The decided grade per image.
        neighbors ([`NeighborResult`], *optional*):
            For `mode="knn"`: the bank rows that voted, nearest first.
        grade_sets (`torch.LongTensor` of shape `[B, 2]`, *optional*):
            Inclusive lowest and highest grade of each image's conformal grade set (it contains the decided
            grade). `None` when the config holds no conformal calibration for this mode (or a kNN `k` other
            than the calibrated `knn_k` was asked for, which the calibration does not cover).
    """

    scores: torch.Tensor
    grades: torch.Tensor
    neighbors: NeighborResult | None = None
    grade_sets: torch.Tensor | None = None

    def grade_set_lists(self) -> list[list[int]] | None:
        """`grade_sets` as one list of grades per image (e.g. `[2, 3]`)."""
        if self.grade_sets is None:
            return None
        return [list(range(low, high + 1)) for low, high in self.grade_sets.tolist()]


def _decision(
    outputs: RetinaScanOutput, mode: str, config: RetinaScanConfig, bank: FeatureBank | None, k: int | None
) -> GradeDecision:
    if mode == "knn":
        if bank is None:
            raise ValueError("mode='knn' needs a feature bank.")
        neighbors = bank.knn(outputs.embeddings.float(), k=k or config.knn_k, weighting=config.knn_weighting)
        return GradeDecision(neighbors.scores, neighbors.grades, neighbors)
    if mode == "ordinal":
        return GradeDecision(outputs.probs, outputs.predicted_grade)
    if mode == "prototype":
        scores = F.softmax(outputs.prototype_logits.float() / config.prototype_calibration_temperature, dim=-1)
        return GradeDecision(scores, scores.argmax(dim=-1))
    raise ValueError(f"mode must be one of {DECISION_MODES}, got {mode!r}.")


def decide(
    outputs: RetinaScanOutput,
    mode: str,
    config: RetinaScanConfig,
    bank: FeatureBank | None = None,
    k: int | None = None,
    coverage: float | None = None,
) -> GradeDecision:
    """The grades (and conformal grade sets) of one decision mode from head outputs.

    `outputs` is anything with the fields of [`RetinaScanOutput`] (`embeddings`, `probs`, `predicted_grade`,
    `prototype_logits`). The pipeline, evaluation and training all call this one function, so a model is
    evaluated exactly as it is served. Modes: `"knn"` (vote of the `k` nearest `bank` rows), `"ordinal"`
    (calibrated CORAL thresholds) and `"prototype"` (calibrated softmax over the text prototypes). Grade sets
    target `coverage` (default: `config.conformal_coverage`) with the mode's calibration scores in the config.
    """
    decision = _decision(outputs, mode, config, bank, k)
    calibration = (config.conformal_scores or {}).get(mode)
    if calibration and not (mode == "knn" and k not in (None, config.knn_k)):
        coverage = config.conformal_coverage if coverage is None else coverage
        threshold = conformal_threshold(calibration, config.conformal_calibration_size, coverage)
        decision.grade_sets = conformal_grade_sets(decision.scores, decision.grades, threshold)
    return decision


def _register_pipeline_task() -> None:
    """Register `pipeline("retinascan")` unless a pipeline already serves it (see `register_pipeline_task`).

    Called when a model is built, because a model loaded through remote code must bring its pipeline task with it,
    and imported here, not at module level, because the pipeline module imports this one.
    """
    from .pipeline_retinascan import register_pipeline_task

    register_pipeline_task(replace=False)


class RetinaScanPreTrainedModel(PreTrainedModel):
    config_class = RetinaScanConfig
    base_model_prefix = "retinascan"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer"]
    # Attention runs only inside the CLIP backbone, so RetinaScan supports exactly what CLIP supports; the requested
    # `attn_implementation` is applied to the backbone's (sub-)config by transformers.
    _supports_sdpa = CLIPModel._supports_sdpa
    _supports_flash_attn = CLIPModel._supports_flash_attn
    _supports_flex_attn = CLIPModel._supports_flex_attn
    _supports_attention_backend = CLIPModel._supports_attention_backend

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # CLIP is a sub-PreTrainedModel and initialises itself; only the heads arrive here.
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RetinaScanCoralHead):
            # Descending biases in (0, 1] as in the CORAL reference: rank-consistent from the first step.
            num_tasks = module.bias.shape[0]
            init.copy_(module.bias, torch.arange(num_tasks, 0, -1, dtype=module.bias.dtype) / num_tasks)
        elif isinstance(module, RetinaScanModel):
            init.zeros_(module.text_prototypes)
            init.zeros_(module.feature_mean)
            init.ones_(module.feature_std)


class RetinaScanModel(RetinaScanPreTrainedModel):
    """Grades diabetic retinopathy (ICDR 0-4) from fundus `pixel_values`.

    Build from a pretrained CLIP with [`from_backbone`], or load a trained model with `from_pretrained`.
    Passing `image_features` instead of `pixel_values` skips the backbone (cached-feature training).
    """

    def __init__(self, config: RetinaScanConfig, backbone: CLIPModel | None = None):
        super().__init__(config)
        self.clip = backbone if backbone is not None else CLIPModel(config.backbone_config)
        if not config.text_tower:
            self._remove_text_tower()
        dim = config.embedding_dim
        self.projection = RetinaScanProjectionHead(dim, config.projection_hidden_size, config.projection_dropout)
        self.coral = RetinaScanCoralHead(dim, config.num_ordinal_tasks)
        # Text embeddings of the grade descriptions: computed once (see `compute_text_prototypes`) and saved
        # with the weights, so inference never needs a tokenizer.
        self.register_buffer("text_prototypes", torch.zeros(config.num_labels, dim), persistent=True)
        # Standardisation of backbone features before the heads (identity until `set_feature_statistics`).
        # CLIP image features share a large common component; removing it lets the small heads see the
        # per-image variation, which otherwise is a tiny fraction of each feature's magnitude.
        self.register_buffer("feature_mean", torch.zeros(dim), persistent=True)
        self.register_buffer("feature_std", torch.ones(dim), persistent=True)
        self.post_init()
        self.apply_backbone_freezing()
        _register_pipeline_task()

    def apply_backbone_freezing(self) -> None:
        """Make CLIP's parameters untrainable when `config.freeze_backbone` is set (a no-op otherwise).

        Called at construction *and* at the end of `from_pretrained`: transformers' loader replaces every parameter
        with a new `nn.Parameter(..., requires_grad=True)` holding the checkpoint's values, so a flag set in
        `__init__` does not survive loading.
        """
        if self.config.freeze_backbone:
            self.clip.requires_grad_(False)

    def _remove_text_tower(self) -> None:
        # `None` rather than `del`: CLIP's weight initialisation reads `text_projection` (and skips `None`), and
        # `state_dict` skips `None` modules, so the saved checkpoint simply has no text weights.
        self.clip.text_model = None
        self.clip.text_projection = None

    def drop_text_tower(self) -> RetinaScanModel:
        """Remove CLIP's text tower, which grading never runs (the prototypes are a buffer), and record that in the
        config, so the saved model is smaller and loads without missing-weight warnings. Irreversible for this
        instance: recomputing prototypes then needs the full backbone (`from_backbone`)."""
        self.config.text_tower = False
        self._remove_text_tower()
        return self

    def get_input_embeddings(self) -> nn.Module:
        """The vision tower's patch embedding (a `Conv2d`), as for transformers' vision models."""
        return self.clip.vision_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.clip.vision_model.embeddings.patch_embedding = value

    @classmethod
    def from_backbone(
        cls,
        pretrained_clip_name_or_path: str | os.PathLike = "openai/clip-vit-base-patch16",
        tokenizer=None,
        **config_overrides,
    ) -> RetinaScanModel:
        """A new RetinaScan model (untrained heads) on a pretrained CLIP checkpoint, prototypes computed.

        `pretrained_clip_name_or_path` is any CLIP repo id or local folder; its tokenizer embeds the grade
        descriptions unless `tokenizer` is given.
        """
        from transformers import AutoTokenizer

        clip = CLIPModel.from_pretrained(pretrained_clip_name_or_path)
        config = RetinaScanConfig(backbone_config=clip.config, **config_overrides)
        model = cls(config, backbone=clip)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(pretrained_clip_name_or_path)
        model.compute_text_prototypes(tokenizer)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with `freeze_backbone` applied, the weights' origin remembered, and
        weights that cannot be served refused.

        Every loading path (this class, `AutoModel`, `AutoModelForImageClassification`, remote code, pipelines) ends
        here, so this is where the backbone is frozen again after the loader replaced its parameters (see
        [`apply_backbone_freezing`]). The pipeline reads `pretrained_source` to load the feature bank from the same
        repo *and commit* as the weights: a bank from another revision would vote with embeddings of other weights.
        A corrupt safetensors file, or weights holding NaN/inf (or a zero `feature_std`, which divides), raise naming
        the file instead of grading every image "No DR" with NaN scores.
        Returns what transformers returns (`(model, loading_info)` with `output_loading_info=True`).
        """
        location = os.path.join(os.fspath(pretrained_model_name_or_path or ""), kwargs.get("subfolder") or "")
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as error:
            raise OSError(f"{_weights_file(location)} is not a readable safetensors file: {error}") from error
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        try:
            model.check_weights()
        except InvalidArtefactError as error:
            raise error.in_file(_weights_file(location)) from error
        model.apply_backbone_freezing()
        # `None` (weights given as `state_dict`, nothing on disk or the Hub): there is no folder to find a bank in.
        model.pretrained_source = (
            None
            if pretrained_model_name_or_path is None
            else {
                "pretrained_model_name_or_path": str(pretrained_model_name_or_path),
                "revision": kwargs.get("revision"),
                "cache_dir": kwargs.get("cache_dir"),
                "token": kwargs.get("token"),
                "local_files_only": bool(kwargs.get("local_files_only", False)),
                "subfolder": kwargs.get("subfolder") or "",
            }
        )
        return loaded

    def check_weights(self) -> None:
        """Raise [`InvalidArtefactError`] naming the first parameter or buffer holding NaN/inf, or a `feature_std`
        entry that is not positive (features are divided by it)."""
        for name, tensor in chain(self.named_parameters(), self.named_buffers()):
            check_finite_tensor(name, tensor)
        if not bool((self.feature_std > 0).all()):
            raise InvalidArtefactError("feature_std must be positive everywhere (features are divided by it).")

    @torch.no_grad()
    def compute_text_prototypes(self, tokenizer, descriptions: list[str] | None = None) -> torch.Tensor:
        """Embed grade descriptions with CLIP's text tower into the `text_prototypes` buffer.

        New `descriptions` (one per grade) replace those in the config, so the saved model records the text
        its prototypes came from.
        """
        if not self.config.text_tower:
            raise ValueError(
                "This model has no CLIP text tower (config.text_tower=False: it was dropped for release), so it cannot "
                "embed grade descriptions. Build the model with RetinaScanModel.from_backbone(...) to recompute them."
            )
        if descriptions is not None:
            if len(descriptions) != self.config.num_labels:
                raise ValueError(f"Need {self.config.num_labels} descriptions, got {len(descriptions)}.")
            self.config.grade_descriptions = list(descriptions)
        max_length = self.config.backbone_config.text_config.max_position_embeddings
        tokens = tokenizer(
            self.config.grade_descriptions,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(self.text_prototypes.device)
        text = self.clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        self.text_prototypes.copy_(F.normalize(text.pooler_output.float(), dim=-1))
        return self.text_prototypes

    @torch.no_grad()
    def set_feature_statistics(
        self,
        image_features: torch.Tensor | None = None,
        eps: float = 1e-6,
        *,
        statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Standardise backbone features with the per-dimension mean and std of `image_features` `[..., D]`.

        Training calls this once with the (cached) training features, before fitting the heads; the
        statistics are saved with the weights, so inference applies the same standardisation. A cache too
        large for memory passes its streamed `statistics=(mean, std)` instead.
        """
        if statistics is None:
            flat = image_features.detach().reshape(-1, image_features.shape[-1]).float()
            if flat.shape[0] < 2:
                raise ValueError("Feature statistics need at least two feature vectors.")
            statistics = (flat.mean(dim=0), flat.std(dim=0))
        mean, std = statistics
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(eps))

    def backbone_outputs(
        self, pixel_values: torch.Tensor, output_attentions: bool = False, output_hidden_states: bool = False
    ) -> BaseModelOutputWithPooling:
        """CLIP's image tower on pixels `[B, 3, H, W]`: `pooler_output` holds the projected image features `[B, D]`,
        and `hidden_states` / `attentions` the vision tower's, when requested."""
        return self.clip.get_image_features(
            pixel_values=pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone: pixels `[B, 3, H, W]` -> CLIP image features `[B, D]` (projected pooler output)."""
        return self.backbone_outputs(pixel_values).pooler_output

    def forward_head(
        self, image_features: torch.Tensor, labels: torch.Tensor | None = None, *, inference_outputs: bool = True
    ) -> RetinaScanOutput:
        """Trainable heads on backbone features `[B, D]`; the loss when `labels` `[B]` are given.

        `inference_outputs=False` is the training step's forward: it returns only what the loss is made of (`loss`,
        `ordinal_logits`, `prototype_logits`, `embeddings`) and skips the calibrated decision outputs (`logits`,
        `probs`, `predicted_grade`), which no gradient flows through and which a training step never reads; the
        loss is computed by the same operations either way, so it is the same value.
        """
        config = self.config
        image_features = image_features.to(self.projection.fc1.weight.dtype)
        standardised = (image_features - self.feature_mean.to(image_features.dtype)) / self.feature_std.to(
            image_features.dtype
        )
        projected = self.projection(standardised)
        embeddings = F.normalize(projected, dim=-1)
        ordinal_logits = self.coral(projected)
        prototypes = self.text_prototypes.to(embeddings.dtype)
        prototype_logits = embeddings @ prototypes.T / config.prototype_temperature
        loss = None
        if labels is not None:
            labels = labels.to(ordinal_logits.device).long()
            loss = config.coral_loss_weight * coral_loss(ordinal_logits.float(), labels)
            loss = loss + config.prototype_loss_weight * focal_loss(
                prototype_logits.float(), labels, config.focal_gamma
            )
        if not inference_outputs:
            return RetinaScanOutput(
                loss=loss, ordinal_logits=ordinal_logits, prototype_logits=prototype_logits, embeddings=embeddings
            )
        thresholds = torch.tensor(config.coral_thresholds, device=ordinal_logits.device)
        return RetinaScanOutput(
            loss=loss,
            logits=ordinal_grade_logits(ordinal_logits, config.ordinal_temperature, thresholds),
            ordinal_logits=ordinal_logits,
            prototype_logits=prototype_logits,
            probs=ordinal_probabilities(ordinal_logits, config.ordinal_temperature, thresholds),
            embeddings=embeddings,
            predicted_grade=ordinal_grades(ordinal_logits, config.ordinal_temperature, thresholds),
            image_features=image_features,
        )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        inference_outputs: bool = True,
    ) -> RetinaScanOutput | tuple[torch.Tensor, ...]:
        """Grade a batch. Give `pixel_values` `[B, 3, H, W]`, or precomputed `image_features` `[B, D]`.

        `inference_outputs=False` (what the trainer's step passes) leaves out the decision outputs that only
        inference reads (see [`forward_head`]).

        `output_attentions` / `output_hidden_states` (default: the config's) return the CLIP vision tower's
        attentions / hidden states; `return_dict=False` returns a tuple (see [`RetinaScanOutput`]). There is no
        `**kwargs`: a misspelt argument (`lables=`) raises `TypeError` instead of silently returning no loss.
        """
        if (pixel_values is None) == (image_features is None):
            raise ValueError("Pass exactly one of `pixel_values` or `image_features`.")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        backbone = None
        if image_features is None:
            expected = config.backbone_config.vision_config.image_size
            if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[-2:] != (expected, expected):
                raise ValueError(
                    f"pixel_values must have shape [B, 3, {expected}, {expected}], got {tuple(pixel_values.shape)}: "
                    "use RetinaScanImageProcessor to prepare images."
                )
            backbone = self.backbone_outputs(pixel_values.to(self.dtype), output_attentions, output_hidden_states)
            image_features = backbone.pooler_output
        output = self.forward_head(image_features, labels=labels, inference_outputs=inference_outputs)
        if backbone is not None and (output_attentions or output_hidden_states):
            # Rebuilt rather than assigned: a ModelOutput field that was None at construction is not a key of it,
            # and `to_tuple()` must keep the field order.
            output = RetinaScanOutput(**output, hidden_states=backbone.hidden_states, attentions=backbone.attentions)
        return output if return_dict else output.to_tuple()

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save weights and config, and, for remote-code loading, the pipeline code beside them.

        The config's `auto_map` names this class for every Auto class in `AUTO_MODEL_CLASSES` (transformers itself
        writes only the one the class was registered for), and its `custom_pipelines` (see
        [`RetinaScanConfig.to_dict`]) the pipeline, so that `AutoModelForImageClassification` and
        `pipeline("retinascan", model=DIR, trust_remote_code=True)` work in a process that never imported
        `retinascan_hf`.
        """
        from .pipeline_retinascan import RetinaScanPipeline

        if self.is_remote_code():
            target = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            self.config.auto_map = {**auto_map, **dict.fromkeys(AUTO_MODEL_CLASSES, target)}
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            custom_object_save(RetinaScanPipeline, save_directory)

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """transformers' `push_to_hub`: weights, config and code only, so the repo lacks the processor, the feature
        bank and a model card, and `pipeline(...)` cannot load it. That is said (a warning) every time; a complete,
        verified release goes through `retinascan release` / `retinascan_hf.release.release_model`."""
        logger.warning(
            f"RetinaScanModel.push_to_hub uploads weights, config and code only: {repo_id} will lack "
            "preprocessor_config.json, feature_bank.safetensors and a model card, so pipeline(...) cannot load it. "
            f"Upload a complete, verified release with `retinascan release --model DIR --repo-id {repo_id}` "
            "(retinascan_hf.release.release_model)."
        )
        return super().push_to_hub(repo_id, *args, **kwargs)


def _weights_file(location: str) -> str:
    """The weights file of a model folder, for error messages: the shard index when the folder is sharded."""
    if os.path.isfile(os.path.join(location, SAFE_WEIGHTS_INDEX_NAME)):
        return os.path.join(location, SAFE_WEIGHTS_INDEX_NAME)
    return os.path.join(location, SAFE_WEIGHTS_NAME)


__all__ = [
    "AUTO_MODEL_CLASSES",
    "CONFORMAL_STEP_PENALTY",
    "DECISION_MODES",
    "GradeDecision",
    "RetinaScanCoralHead",
    "RetinaScanModel",
    "RetinaScanOutput",
    "RetinaScanPreTrainedModel",
    "RetinaScanProjectionHead",
    "conformal_grade_sets",
    "conformal_threshold",
    "coral_loss",
    "decide",
    "focal_loss",
    "grade_interval_growth",
    "nonconformity_scores",
    "ordinal_grade_logits",
    "ordinal_grades",
    "ordinal_levels",
    "ordinal_probabilities",
    "summarise_conformal_scores",
]
