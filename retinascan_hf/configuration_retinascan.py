"""RetinaScan configuration: the single source of truth for every size, weight, temperature and text.

This file is copied verbatim into model repositories as remote code, so it imports only
transformers and the standard library.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal

from transformers import CLIPConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

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
    referable_grade: int = 2
    conformal_coverage: float = 0.9
    conformal_scores: dict[str, list[float]] | None = None
    conformal_calibration_size: int | None = None
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

    def _validate(self) -> None:
        if self.num_labels < 2:
            raise ValueError(f"RetinaScan needs at least 2 grades, got num_labels={self.num_labels}.")
        if len(self.grade_descriptions) != self.num_labels:
            raise ValueError(
                f"grade_descriptions has {len(self.grade_descriptions)} entries but there are "
                f"{self.num_labels} grades: give exactly one description per grade."
            )
        if len(self.coral_thresholds) != self.num_labels - 1:
            raise ValueError(
                f"coral_thresholds has {len(self.coral_thresholds)} entries; CORAL with {self.num_labels} "
                f"grades has {self.num_labels - 1} tasks."
            )
        for name in ("prototype_temperature", "ordinal_temperature", "prototype_calibration_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be at least 1, got {self.knn_k}.")
        if not 1 <= self.referable_grade < self.num_labels:
            raise ValueError(f"referable_grade must lie in [1, {self.num_labels - 1}], got {self.referable_grade}.")
        self._validate_conformal()

    def _validate_conformal(self) -> None:
        if not 0 < self.conformal_coverage < 1:
            raise ValueError(f"conformal_coverage must lie strictly between 0 and 1, got {self.conformal_coverage}.")
        if self.conformal_scores is None:
            return
        size = self.conformal_calibration_size
        if not isinstance(size, int) or size < 1:
            raise ValueError(
                f"conformal_calibration_size must be a positive integer with conformal_scores, got {size}."
            )
        for mode, scores in self.conformal_scores.items():
            values = [float(value) for value in scores]
            if not 0 < len(values) <= size:
                raise ValueError(f"conformal_scores[{mode!r}] holds {len(values)} scores for {size} images.")
            if not all(0.0 <= value <= 2.0 for value in values) or values != sorted(values):
                raise ValueError(f"conformal_scores[{mode!r}] must be sorted probability masses in [0, 2].")

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
