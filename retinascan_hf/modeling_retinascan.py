"""RetinaScan model: a (frozen) CLIP image tower with projection, text-prototype and CORAL ordinal heads.

Reads top to bottom: losses, small head modules, the output dataclass, then the public model. The
`forward_features` / `forward_head` seam (timm's) separates the frozen backbone from the trainable
heads, so training can compute backbone features once and cache them.

This file is copied verbatim into model repositories as remote code (relative imports only).
"""

from __future__ import annotations

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
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput

from .configuration_retinascan import RetinaScanConfig
from .feature_bank import FeatureBank, NeighborResult
from .validation_retinascan import InvalidArtefactError, check_finite_tensor

DECISION_MODES: tuple[str, ...] = ("knn", "ordinal", "prototype")


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
    """Output of [`RetinaScanModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            `coral_loss_weight * CORAL + prototype_loss_weight * focal(prototype_logits)`.
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
    """

    loss: torch.FloatTensor | None = None
    ordinal_logits: torch.FloatTensor | None = None
    prototype_logits: torch.FloatTensor | None = None
    probs: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    predicted_grade: torch.LongTensor | None = None
    image_features: torch.FloatTensor | None = None


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
    """

    scores: torch.Tensor
    grades: torch.Tensor
    neighbors: NeighborResult | None = None


def decide(
    outputs: RetinaScanOutput,
    mode: str,
    config: RetinaScanConfig,
    bank: FeatureBank | None = None,
    k: int | None = None,
) -> GradeDecision:
    """The grades of one decision mode from head outputs.

    `outputs` is anything with the fields of [`RetinaScanOutput`] (`embeddings`, `probs`, `predicted_grade`,
    `prototype_logits`). The pipeline, evaluation and training all call this one function, so a model is
    evaluated exactly as it is served. Modes: `"knn"` (vote of the `k` nearest `bank` rows), `"ordinal"`
    (calibrated CORAL thresholds) and `"prototype"` (calibrated softmax over the text prototypes).
    """
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


class RetinaScanPreTrainedModel(PreTrainedModel):
    config_class = RetinaScanConfig
    base_model_prefix = "retinascan"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer"]

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
        if config.freeze_backbone:
            self.clip.requires_grad_(False)

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
        """`PreTrainedModel.from_pretrained`, remembering where (and at which revision) the weights came from, and
        refusing weights that cannot be served.

        The pipeline reads `pretrained_source` to load the feature bank from the same repo *and commit* as
        the weights: a bank from another revision would vote with embeddings of other weights. A corrupt
        safetensors file, or weights holding NaN/inf (or a zero `feature_std`, which divides), raise naming the
        file instead of grading every image "No DR" with NaN scores.
        """
        location = os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as error:
            raise OSError(f"{_weights_file(location)} is not a readable safetensors file: {error}") from error
        try:
            model.check_weights()
        except InvalidArtefactError as error:
            raise error.in_file(_weights_file(location)) from error
        model.pretrained_source = {
            "pretrained_model_name_or_path": str(pretrained_model_name_or_path),
            "revision": kwargs.get("revision"),
            "cache_dir": kwargs.get("cache_dir"),
            "token": kwargs.get("token"),
            "local_files_only": bool(kwargs.get("local_files_only", False)),
            "subfolder": kwargs.get("subfolder") or "",
        }
        return model

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
    def set_feature_statistics(self, image_features: torch.Tensor, eps: float = 1e-6) -> None:
        """Standardise backbone features with the per-dimension mean and std of `image_features` `[..., D]`.

        Training calls this once with the (cached) training features, before fitting the heads; the
        statistics are saved with the weights, so inference applies the same standardisation.
        """
        flat = image_features.detach().reshape(-1, image_features.shape[-1]).float()
        if flat.shape[0] < 2:
            raise ValueError("Feature statistics need at least two feature vectors.")
        self.feature_mean.copy_(flat.mean(dim=0))
        self.feature_std.copy_(flat.std(dim=0).clamp_min(eps))

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone: pixels `[B, 3, H, W]` -> CLIP image features `[B, D]` (projected pooler output)."""
        return self.clip.get_image_features(pixel_values=pixel_values).pooler_output

    def forward_head(self, image_features: torch.Tensor, labels: torch.Tensor | None = None) -> RetinaScanOutput:
        """Trainable heads on backbone features `[B, D]`; the loss when `labels` `[B]` are given."""
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
        thresholds = torch.tensor(config.coral_thresholds, device=ordinal_logits.device)
        loss = None
        if labels is not None:
            labels = labels.to(ordinal_logits.device).long()
            loss = config.coral_loss_weight * coral_loss(ordinal_logits.float(), labels)
            loss = loss + config.prototype_loss_weight * focal_loss(
                prototype_logits.float(), labels, config.focal_gamma
            )
        return RetinaScanOutput(
            loss=loss,
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
        **kwargs,
    ) -> RetinaScanOutput:
        """Grade a batch. Give `pixel_values` `[B, 3, H, W]`, or precomputed `image_features` `[B, D]`."""
        if (pixel_values is None) == (image_features is None):
            raise ValueError("Pass exactly one of `pixel_values` or `image_features`.")
        if image_features is None:
            expected = self.config.backbone_config.vision_config.image_size
            if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[-2:] != (expected, expected):
                raise ValueError(
                    f"pixel_values must have shape [B, 3, {expected}, {expected}], got {tuple(pixel_values.shape)}: "
                    "use RetinaScanImageProcessor to prepare images."
                )
            image_features = self.forward_features(pixel_values.to(self.dtype))
        return self.forward_head(image_features, labels=labels)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save weights and config, and, for remote-code loading, the pipeline code beside them.

        `config.custom_pipelines` names the pipeline so that `pipeline("retinascan", model=DIR,
        trust_remote_code=True)` works in a process that never imported `retinascan_hf`.
        """
        from .pipeline_retinascan import RetinaScanPipeline, pipeline_registration

        self.config.custom_pipelines = pipeline_registration()
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            custom_object_save(RetinaScanPipeline, save_directory)


def _weights_file(location: str) -> str:
    """The weights file of a model folder, for error messages: the shard index when the folder is sharded."""
    if os.path.isfile(os.path.join(location, SAFE_WEIGHTS_INDEX_NAME)):
        return os.path.join(location, SAFE_WEIGHTS_INDEX_NAME)
    return os.path.join(location, SAFE_WEIGHTS_NAME)


__all__ = [
    "DECISION_MODES",
    "GradeDecision",
    "RetinaScanCoralHead",
    "RetinaScanModel",
    "RetinaScanOutput",
    "RetinaScanPreTrainedModel",
    "RetinaScanProjectionHead",
    "coral_loss",
    "decide",
    "focal_loss",
    "ordinal_grades",
    "ordinal_levels",
    "ordinal_probabilities",
]
