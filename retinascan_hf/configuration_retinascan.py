"""RetinaScan configuration: the single source of truth for every size, weight, temperature and text.

This file is copied verbatim into model repositories as remote code, so it imports only
transformers and the standard library.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from typing import Any, ClassVar, Literal

from transformers import CLIPConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import CONFIG_NAME

from .validation_retinascan import (
    InvalidArtefactError,
    check_choice,
    check_flag,
    check_number,
    check_numbers,
)

ICDR_LABELS: tuple[str, ...] = (
    "No DR",
    "Mild NPDR",
    "Moderate NPDR",
    "Severe NPDR",
    "Proliferative DR",
)

# One clinical description per ICDR grade. They are embedded once by CLIP's text tower; the
# resulting prototypes anchor the image embedding space to clinical language.
DEFAULT_GRADE_DESCRIPTIONS: tuple[str, ...] = (
    "A fundus photograph of a healthy retina with no diabetic retinopathy: clear vessels, "
    "no microaneurysms, haemorrhages or exudates.",
    "A fundus photograph with mild non-proliferative diabetic retinopathy: a few microaneurysms only.",
    "A fundus photograph with moderate non-proliferative diabetic retinopathy: microaneurysms, "
    "dot and blot haemorrhages and hard exudates.",
    "A fundus photograph with severe non-proliferative diabetic retinopathy: many intraretinal "
    "haemorrhages in four quadrants, venous beading or intraretinal microvascular abnormalities.",
    "A fundus photograph with proliferative diabetic retinopathy: neovascularisation of the disc or "
    "elsewhere, vitreous or preretinal haemorrhage.",
)

# ViT-B/16 at 224 px, the default backbone (openai/clip-vit-base-patch16). CLIPConfig's own default is
# B/32, so the patch size is the one value that must be overridden.
DEFAULT_BACKBONE_KWARGS: dict = {
    "vision_config": {"patch_size": 16, "image_size": 224},
    "projection_dim": 512,
}

# Fields that decide what an image embedding *is*. A feature bank built under one set of these values is
# meaningless under another. Calibration values (temperatures, thresholds) and runtime settings (dtype,
# attention implementation) are deliberately excluded: training writes calibration after the bank is built.
_EMBEDDING_VISION_FIELDS: tuple[str, ...] = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)

# Upper bounds on the backbone's sizes, far above any CLIP, so that a tampered `config.json` cannot make model
# construction allocate tens of gigabytes before a single weight is read (e.g. `image_size: 60000`).
_MAX_BACKBONE_SIZES: dict[str, int] = {
    "hidden_size": 16384,
    "intermediate_size": 65536,
    "num_hidden_layers": 256,
    "num_attention_heads": 256,
}
_MAX_PATCHES = 4096  # (image_size / patch_size) ** 2: 64 x 64 patches, e.g. ViT-B/16 at 1024 px
_MAX_TEXT_POSITIONS = 4096
_MAX_VOCABULARY = 1_000_000


def _validate_backbone(backbone: CLIPConfig) -> None:
    """Sizes of the CLIP towers: positive integers below bounds no real CLIP reaches."""
    for tower_name in ("vision_config", "text_config"):
        tower = getattr(backbone, tower_name)
        for name, high in _MAX_BACKBONE_SIZES.items():
            check_number(f"backbone_config.{tower_name}.{name}", getattr(tower, name), integer=True, low=1, high=high)
    vision, text = backbone.vision_config, backbone.text_config
    check_number("backbone_config.vision_config.patch_size", vision.patch_size, integer=True, low=1)
    side = math.isqrt(_MAX_PATCHES) * vision.patch_size
    check_number("backbone_config.vision_config.image_size", vision.image_size, integer=True, low=1, high=side)
    check_number(
        "backbone_config.text_config.max_position_embeddings",
        text.max_position_embeddings,
        integer=True,
        low=1,
        high=_MAX_TEXT_POSITIONS,
    )
    check_number("backbone_config.text_config.vocab_size", text.vocab_size, integer=True, low=1, high=_MAX_VOCABULARY)
    check_number("backbone_config.projection_dim", backbone.projection_dim, integer=True, low=1, high=16384)


PIPELINE_TASK = "retinascan"


def pipeline_registration() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` entry every saved config carries, so that remote code can rebuild the pipeline
    (`pipeline_retinascan.py` is saved beside the weights)."""
    spec = {"impl": "pipeline_retinascan.RetinaScanPipeline", "pt": ["AutoModel"], "tf": [], "type": "image"}
    return {PIPELINE_TASK: spec}


class RetinaScanConfig(PreTrainedConfig):
    r"""Configuration of a [`RetinaScanModel`]: a CLIP backbone plus projection, prototype and CORAL heads.

    Args:
        backbone_config (`CLIPConfig` or `dict`, *optional*):
            The CLIP backbone. Defaults to the ViT-B/16 architecture of `openai/clip-vit-base-patch16`. A dict
            without `model_type` is read as a CLIP config.
        freeze_backbone (`bool`, defaults to `True`):
            Whether CLIP's weights stay frozen. Frozen is the default because it lets training cache
            backbone features once and train only the heads.
        projection_hidden_size (`int`, defaults to 512):
            Hidden width of the projection head (Linear-ReLU-Dropout-Linear). Its input and output width is the
            backbone's `projection_dim` (512 for ViT-B/16), because the output is compared with CLIP *text*
            embeddings, which live in that space.
        projection_dropout (`float`, defaults to 0.1):
            Dropout inside the projection head.
        prototype_temperature (`float`, defaults to 0.1):
            Temperature dividing the cosine similarities to the text prototypes during training.
        grade_descriptions (`list[str]`, *optional*):
            One clinical description per grade, embedded by CLIP's text tower into the prototypes.
        coral_loss_weight (`float`, defaults to 1.0):
            Weight of the CORAL ordinal loss.
        prototype_loss_weight (`float`, defaults to 0.5):
            Weight of the focal loss on the prototype logits.
        focal_gamma (`float`, defaults to 2.5):
            Focusing parameter of that focal loss.
        knn_k (`int`, defaults to 10):
            Neighbours consulted by the feature-bank vote.
        knn_weighting (`"uniform"` or `"distance"`, defaults to `"distance"`):
            `"distance"` weights each neighbour by its inverse cosine distance, so near-duplicates dominate.
        ordinal_temperature (`float`, defaults to 1.0):
            Post-hoc temperature for the ordinal logits (fitted on validation data by training).
        prototype_calibration_temperature (`float`, defaults to 1.0):
            Post-hoc temperature for the prototype logits (fitted on validation data by training).
        coral_thresholds (`list[float]`, *optional*):
            One decision threshold per CORAL task, on the temperature-scaled logits. Zeros (probability
            0.5) by default; training tunes them on validation data.
        ood_threshold (`float`, *optional*):
            Largest `ood_score` (distance of an image's CLIP embedding to those of its nearest training images, in
            units of their own leave-one-out neighbour distance; see `OODReference`) that is still graded; above it
            the pipeline answers `gradable: False`. Training sets it to a high quantile of the validation images'
            scores; `None` (an untrained model) disables the check.
        referable_grade (`int`, defaults to 2):
            Lowest grade that counts as *referable* DR (ICDR: moderate NPDR or worse). Screening programmes refer
            at this cut-off; the pipeline's `referable` flag and the screening metrics use it.
        conformal_coverage (`float`, defaults to 0.9):
            Default target coverage of the conformal grade sets (the share of images whose set holds the true
            grade); the pipeline's `coverage=` overrides it per call.
        conformal_scores (`dict[str, list[float]]`, *optional*):
            Per decision mode, the sorted nonconformity scores of the validation images (at most 1000 order
            statistics), fitted by training (split-conformal calibration). Keeping scores rather than one
            quantile is what lets any coverage be asked for at call time. `None`: no grade sets.
        conformal_calibration_size (`int`, *optional*):
            Number of validation images the `conformal_scores` summarise (required with them).
        text_tower (`bool`, defaults to `True`):
            Whether the model holds CLIP's text tower. Grading never runs it (the prototypes are a saved buffer), so
            a release drops it (`RetinaScanModel.drop_text_tower`): 42% of a ViT-B/16 checkpoint. Without it,
            `compute_text_prototypes` cannot run.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of the heads.
    """

    model_type = "retinascan"
    # Pipeline tasks this process serves with installed classes: set by the installed package's `register()`, never
    # by a remote-code copy of this file. `pipeline()` demands `trust_remote_code=True` for every task named in a
    # config's `custom_pipelines`, even when an installed pipeline is registered under that name; leaving the
    # installed tasks out of the loaded config lets the installed registration serve them.
    locally_registered_pipeline_tasks: ClassVar[frozenset[str]] = frozenset()
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=CLIPConfig, init_kwargs=DEFAULT_BACKBONE_KWARGS)
    }

    backbone_config: dict | CLIPConfig | None = None
    freeze_backbone: bool = True
    projection_hidden_size: int = 512
    projection_dropout: float = 0.1
    prototype_temperature: float = 0.1
    grade_descriptions: list[str] | None = None
    coral_loss_weight: float = 1.0
    prototype_loss_weight: float = 0.5
    focal_gamma: float = 2.5
    knn_k: int = 10
    knn_weighting: Literal["uniform", "distance"] = "distance"
    ordinal_temperature: float = 1.0
    prototype_calibration_temperature: float = 1.0
    coral_thresholds: list[float] | None = None
    ood_threshold: float | None = None
    referable_grade: int = 2
    conformal_coverage: float = 0.9
    conformal_scores: dict[str, list[float]] | None = None
    conformal_calibration_size: int | None = None
    text_tower: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and "model_type" not in self.backbone_config:
            self.backbone_config = {**self.backbone_config, "model_type": CLIPConfig.model_type}
        if self.id2label is None:
            self.id2label = dict(enumerate(ICDR_LABELS))
            self.label2id = {label: index for index, label in enumerate(ICDR_LABELS)}
        super().__post_init__(**kwargs)
        if self.grade_descriptions is None:
            self.grade_descriptions = list(DEFAULT_GRADE_DESCRIPTIONS[: self.num_labels])
        if self.coral_thresholds is None:
            self.coral_thresholds = [0.0] * (self.num_labels - 1)
        self.custom_pipelines = {
            task: spec
            for task, spec in pipeline_registration().items()
            if task not in type(self).locally_registered_pipeline_tasks
        }
        self._validate()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """transformers' reader, except that a folder without `config.json` is an error, not the default config.

        Falling back to defaults would build a ViT-B/16 around a tiny checkpoint and fail far from the cause.
        """
        config_dict, unused = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            location = os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
            raise OSError(f"{location} has no {CONFIG_NAME}: it is not a saved RetinaScan model folder.")
        return config_dict, unused

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs) -> RetinaScanConfig:
        """transformers' loader; an invalid value is reported with the path of the `config.json` it came from."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except InvalidArtefactError as error:
            location = os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
            raise error.in_file(os.path.join(location, CONFIG_NAME)) from error

    def _validate(self) -> None:
        """Type and range of every field: `config.json` is untrusted input (NaN passes `nan <= 0`)."""
        check_number("num_labels", self.num_labels, integer=True, low=2)
        labels = self.id2label or {}
        if sorted(labels) != list(range(self.num_labels)) or not all(isinstance(v, str) for v in labels.values()):
            raise InvalidArtefactError(
                f"id2label must name every grade 0..{self.num_labels - 1} exactly once, got {labels!r}.",
                field="id2label",
            )
        descriptions = self.grade_descriptions
        if not isinstance(descriptions, list) or not all(isinstance(text, str) for text in descriptions):
            raise InvalidArtefactError("grade_descriptions must be a list of strings.", field="grade_descriptions")
        if len(descriptions) != self.num_labels:
            raise InvalidArtefactError(
                f"grade_descriptions has {len(descriptions)} entries but there are "
                f"{self.num_labels} grades: give exactly one description per grade.",
                field="grade_descriptions",
            )
        if isinstance(self.coral_thresholds, list) and len(self.coral_thresholds) != self.num_labels - 1:
            raise InvalidArtefactError(
                f"coral_thresholds has {len(self.coral_thresholds)} entries; CORAL with {self.num_labels} "
                f"grades has {self.num_labels - 1} tasks.",
                field="coral_thresholds",
            )
        check_numbers("coral_thresholds", self.coral_thresholds, length=self.num_labels - 1)
        for name in ("prototype_temperature", "ordinal_temperature", "prototype_calibration_temperature"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        for name in ("coral_loss_weight", "prototype_loss_weight", "focal_gamma", "initializer_range"):
            check_number(name, getattr(self, name), low=0)
        check_number("projection_dropout", self.projection_dropout, low=0, high=1, high_open=True)
        check_number("projection_hidden_size", self.projection_hidden_size, integer=True, low=1, high=65536)
        _validate_backbone(self.backbone_config)
        check_number("knn_k", self.knn_k, integer=True, low=1)  # capped at the bank's size when used
        check_choice("knn_weighting", self.knn_weighting, ("uniform", "distance"))
        check_flag("freeze_backbone", self.freeze_backbone)
        check_flag("text_tower", self.text_tower)
        if self.ood_threshold is not None:
            check_number("ood_threshold", self.ood_threshold, low=0, low_open=True)
        check_number("referable_grade", self.referable_grade, integer=True, low=1, high=self.num_labels - 1)
        self._validate_conformal()

    def _validate_conformal(self) -> None:
        check_number("conformal_coverage", self.conformal_coverage, low=0, high=1, low_open=True, high_open=True)
        if self.conformal_scores is None:
            return
        size = self.conformal_calibration_size
        check_number("conformal_calibration_size", size, integer=True, low=1)
        if not isinstance(self.conformal_scores, dict):
            raise InvalidArtefactError("conformal_scores must map modes to lists of scores.", field="conformal_scores")
        for mode, scores in self.conformal_scores.items():
            if isinstance(scores, (str, bytes)) or not isinstance(scores, (list, tuple)):
                raise InvalidArtefactError(
                    f"conformal_scores[{mode!r}] must be a list of scores.", field="conformal_scores"
                )
            if not 0 < len(scores) <= size:
                raise InvalidArtefactError(
                    f"conformal_scores[{mode!r}] holds {len(scores)} scores for {size} images.",
                    field="conformal_scores",
                )
            valid = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.0 <= v <= 2.0 for v in scores)
            if not valid or list(scores) != sorted(scores):  # `0 <= nan` is false: NaN is refused here too
                raise InvalidArtefactError(
                    f"conformal_scores[{mode!r}] must be sorted probability masses in [0, 2].", field="conformal_scores"
                )

    def to_dict(self) -> dict[str, Any]:
        """`PreTrainedConfig.to_dict`, always with the full `custom_pipelines` entry: a saved config must let remote
        code rebuild the pipeline, whichever process (with or without the package) saves it."""
        output = super().to_dict()
        output["custom_pipelines"] = pipeline_registration()
        return output

    @property
    def embedding_dim(self) -> int:
        """Width of the image embeddings (and of feature-bank rows): CLIP's joint embedding width."""
        return self.backbone_config.projection_dim

    @property
    def num_ordinal_tasks(self) -> int:
        return self.num_labels - 1

    def embedding_hash(self) -> str:
        """A short fingerprint of the fields that define the embedding space.

        Stored in feature-bank metadata, so that a bank built by a different architecture is noticed
        instead of silently voting with meaningless neighbours.
        """
        vision = self.backbone_config.vision_config
        payload = {
            "vision": {name: getattr(vision, name, None) for name in _EMBEDDING_VISION_FIELDS},
            "projection_dim": self.backbone_config.projection_dim,
            "projection_hidden_size": self.projection_hidden_size,
        }
        encoded = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]


__all__ = ["DEFAULT_GRADE_DESCRIPTIONS", "ICDR_LABELS", "PIPELINE_TASK", "RetinaScanConfig", "pipeline_registration"]
