"""Grad-CAM for the RetinaScan ViT backbone: which patches of the fundus raised the score of a grade.

Grad-CAM (Selvaraju et al., 2017) on a ViT: take the tokens entering the *last* transformer block's
attention (the output of its first LayerNorm, `[B, 1 + N, C]`), differentiate the target grade's score
with respect to them, weight each channel by its mean gradient over the N patch tokens, and keep the
positive part of the weighted sum per patch token (the CLS token is not a place in the image). The patch
grid is upsampled to the model's input size, so the map lies exactly over the cropped fundus the model saw
([`RetinaScanImageProcessor.to_model_image`]).

Why the block's *input* tokens and not its output: CLIP pools only the CLS token of the last block's output,
so the gradient of any score with respect to that block's output *patch* tokens is identically zero. The
last attention is where patch tokens feed the CLS token.

The score differentiated per decision mode (`target grade` = the decided grade unless one is requested):

- `"ordinal"`: the calibrated CORAL log-odds that the grade is *at least* the target grade g,
  `logit_{g-1} / T - threshold_{g-1}`; for grade 0, the log-odds that it is *at most* grade 0 (the negative
  of task 0's). Log-odds rather than log-probabilities: same direction, but no vanishing gradient for a
  confident image. CORAL's tasks share one weight vector, so every target grade >= 1 gives the same map
  (the evidence for a more severe grade) and grade 0 gives the evidence against it.
- `"prototype"`: the prototype logit of the target grade (cosine to its text prototype / temperature).
- `"knn"`: the vote for the target grade, linearised: the alignment of the projection head's output (before
  its L2 normalisation) with the sum of the target grade's voters' bank embeddings, each weighted by its vote
  weight (as in [`FeatureBank.knn`]; neighbours and weights as found by the forward pass). Differentiating
  the cosine itself would explain little: its gradient is orthogonal to the embedding, so for the near-
  duplicates that decide a kNN vote it is a small residual pointing at where the neighbours *differ* (with
  the blob model of `synthetic_lesion`, whose neighbours carry blobs elsewhere, such maps often left the blob).
  The raw vote, not the vote share: when all k neighbours agree the share is constant.

A map is all zeros when nothing in the image raises the target score (e.g. a requested kNN grade that no
neighbour has). The model is not changed: no weight gets `requires_grad` or `.grad`, the temporary forward
hooks are removed, and train/eval mode is restored, so a frozen backbone works as it is.

Limitation: the map says which tokens the *last* block read the evidence from. A deep ViT may already have
moved evidence between tokens in earlier blocks (a two-block toy ViT trained from scratch did: its maps were
the blob's negative); pretrained CLIP towers keep tokens largely local, which is what Grad-CAM relies on.

This file is copied into model repositories as remote code with the pipeline (relative imports only); only
`pipeline(..., return_heatmap=True)` imports it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .configuration_retinascan import RetinaScanConfig
from .feature_bank import FeatureBank
from .modeling_retinascan import GradeDecision, RetinaScanModel, RetinaScanOutput, decide

# Smallest and largest side of one explanation panel: readable, and never a memory bomb.
PANEL_SIZE_RANGE = (16, 4096)
# Inverse-cosine-distance weights as in FeatureBank.knn, so the explained vote is the vote that was cast.
_DISTANCE_EPS = 1e-6


@dataclass
class GradCamResult:
    """Grad-CAM maps for a batch and the decision they explain.

    Args:
        heatmaps (`torch.FloatTensor` of shape `[B, H, W]`):
            Maps at the model's input size, each scaled so its maximum is 1 (all zeros where nothing raised
            the target score).
        target_grades (`torch.LongTensor` of shape `[B]`):
            The grade each map explains.
        decision ([`GradeDecision`]):
            The decision of the requested mode on the same forward pass (detached).
        outputs ([`RetinaScanOutput`]):
            The model's outputs of that forward pass (detached), e.g. for the pipeline's gradability checks.
    """

    heatmaps: torch.Tensor
    target_grades: torch.Tensor
    decision: GradeDecision
    outputs: RetinaScanOutput | None = None


def _last_block_norm(model: RetinaScanModel) -> torch.nn.Module:
    return model.clip.vision_model.encoder.layers[-1].layer_norm1


def _detached(outputs: RetinaScanOutput) -> RetinaScanOutput:
    return RetinaScanOutput(
        **{key: value.detach() for key, value in outputs.items() if isinstance(value, torch.Tensor)}
    )


def _knn_vote_direction(
    decision: GradeDecision, grades: torch.Tensor, bank: FeatureBank, weighting: str
) -> torch.Tensor:
    """Per row, the vote-weighted sum of the bank embeddings of the neighbours whose grade is `grades`, `[B, D]`."""
    neighbors = decision.neighbors
    device = neighbors.indices.device
    if weighting == "uniform":
        weights = torch.ones_like(neighbors.similarities)
    else:
        weights = 1.0 / ((1.0 - neighbors.similarities.float()).clamp_min(0.0) + _DISTANCE_EPS)
    # Gather the k rows where the bank lives and move only them (never the whole bank to the model's device).
    voters = bank.grades[neighbors.indices.to(bank.grades.device)].to(device) == grades.to(device).unsqueeze(-1)
    rows = bank.embeddings[neighbors.indices.to(bank.embeddings.device)].to(device=device, dtype=torch.float32)
    return ((weights * voters).unsqueeze(-1) * rows).sum(1)


def target_scores(
    outputs: RetinaScanOutput,
    projected: torch.Tensor,
    mode: str,
    config: RetinaScanConfig,
    grades: torch.Tensor,
    decision: GradeDecision,
    bank: FeatureBank | None = None,
) -> torch.Tensor:
    """The differentiable score of `grades` `[B]` under `mode`, `[B]` (see the module docstring).

    `projected` is the projection head's output `[B, D]` (the embeddings before L2 normalisation);
    `decision` is the same mode's decision on `outputs`, whose neighbours kNN reads.
    """
    index = grades.unsqueeze(-1)
    if mode == "prototype":
        return outputs.prototype_logits.float().gather(-1, index).squeeze(-1)
    if mode == "ordinal":
        thresholds = torch.tensor(config.coral_thresholds, device=outputs.ordinal_logits.device)
        shifted = outputs.ordinal_logits.float() / config.ordinal_temperature - thresholds
        task = shifted.gather(-1, (index - 1).clamp_min(0)).squeeze(-1)
        return torch.where(grades > 0, task, -task)
    if mode == "knn":
        direction = _knn_vote_direction(decision, grades, bank, config.knn_weighting).to(projected.device)
        return (projected.float() * direction).sum(-1)
    raise ValueError(f"Grad-CAM has no target score for mode {mode!r}.")


def check_target_grade(grade, num_labels: int) -> int:
    """`grade` as an `int` in `[0, num_labels)`, or a `ValueError` (bools and fractional numbers are refused)."""
    if isinstance(grade, bool) or not isinstance(grade, numbers.Integral) or not 0 <= grade < num_labels:
        raise ValueError(f"The grade to explain must be an integer in [0, {num_labels - 1}], got {grade!r}.")
    return int(grade)


def grad_cam(
    model: RetinaScanModel,
    pixel_values: torch.Tensor,
    mode: str = "ordinal",
    bank: FeatureBank | None = None,
    k: int | None = None,
    target_grade: int | None = None,
    coverage: float | None = None,
) -> GradCamResult:
    """Grad-CAM maps of `pixel_values` `[B, 3, S, S]` for the grade `mode` decides (or `target_grade`).

    One forward pass gives both the decision (with grade sets at `coverage`, as [`decide`]) and the maps. Works
    under `torch.no_grad()` / inference pipelines (gradients are enabled locally) and with a frozen backbone.
    """
    if target_grade is not None:
        target_grade = check_target_grade(target_grade, model.config.num_labels)
    if not torch.isfinite(pixel_values).all():
        raise ValueError("pixel_values hold NaN or infinite values: prepare images with RetinaScanImageProcessor.")
    vision = model.config.backbone_config.vision_config
    side = vision.image_size // vision.patch_size
    captured: dict[str, torch.Tensor] = {}

    def capture_tokens(_module, _inputs, output):
        # A fresh leaf that requires grad: the weights stay untouched, and nothing below it enters the graph.
        captured["tokens"] = output.detach().requires_grad_(True)
        return captured["tokens"]

    def capture_projection(_module, _inputs, output):
        captured["projected"] = output

    # Each module's own flag, not just the model's: a training loop may keep a frozen backbone in eval mode.
    training_flags = {module: module.training for module in model.modules()}
    handles = [
        _last_block_norm(model).register_forward_hook(capture_tokens),
        model.projection.register_forward_hook(capture_projection),
    ]
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            outputs = model(pixel_values=pixel_values.clone().to(model.dtype))
            detached = _detached(outputs)
            decision = decide(detached, mode, model.config, bank, k, coverage=coverage)
            grades = decision.grades if target_grade is None else torch.full_like(decision.grades, target_grade)
            grades = grades.to(outputs.embeddings.device)
            scores = target_scores(outputs, captured["projected"], mode, model.config, grades, decision, bank)
            activations = captured["tokens"]
            (gradients,) = torch.autograd.grad(scores.sum(), activations)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training_flags.items():
            module.training = flag
    patch_activations, patch_gradients = activations.detach()[:, 1:].float(), gradients[:, 1:].float()
    channel_weights = patch_gradients.mean(dim=1, keepdim=True)
    cam = F.relu((channel_weights * patch_activations).sum(-1)).reshape(-1, 1, side, side)
    cam = F.interpolate(cam, size=(vision.image_size, vision.image_size), mode="bilinear", align_corners=False)
    cam = cam.squeeze(1).clamp_min(0.0)
    if not torch.isfinite(cam).all():  # e.g. float16 overflow in the backward pass: never a silent blank map
        raise FloatingPointError("Grad-CAM produced non-finite values; run the model in float32 to explain it.")
    peak = cam.flatten(1).amax(-1).reshape(-1, 1, 1)
    heatmaps = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return GradCamResult(heatmaps=heatmaps, target_grades=grades.detach(), decision=decision, outputs=detached)


def pixels_to_image(pixel_values: torch.Tensor, image_mean, image_std, do_normalize: bool = True) -> Image.Image:
    """Undo the processor's normalisation of one `[3, S, S]` tensor: the RGB picture the model saw."""
    array = pixel_values.detach().float().cpu().numpy().transpose(1, 2, 0)
    if do_normalize:
        array = array * np.asarray(image_std, np.float32) + np.asarray(image_mean, np.float32)
    return Image.fromarray(np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8), "RGB")


def colorize(heatmap: np.ndarray) -> Image.Image:
    """A `[H, W]` map in [0, 1] as an RGB image with the "jet" colour scale (blue = 0, red = 1), no matplotlib."""
    value = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)[..., None]
    centres = np.asarray([3.0, 2.0, 1.0], np.float32)  # red, green, blue peak at 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * value - centres), 0.0, 1.0)
    return Image.fromarray(np.round(rgb * 255.0).astype(np.uint8), "RGB")


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """Blend the coloured map into `image`, in proportion to the heat: cold regions keep the fundus visible."""
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)[..., None]
    if heat.shape[:2] != (image.height, image.width):
        raise ValueError(f"Heat map {heat.shape[:2]} and image {image.height}x{image.width} differ in size.")
    base = np.asarray(image.convert("RGB"), np.float32)
    colour = np.asarray(colorize(heat[..., 0]), np.float32)
    blended = base * (1.0 - alpha * heat) + colour * (alpha * heat)
    return Image.fromarray(np.round(blended).astype(np.uint8), "RGB")


def check_panel_size(panel_size: int) -> int:
    """`panel_size` if it is an integer in `PANEL_SIZE_RANGE`, else a `ValueError`."""
    low, high = PANEL_SIZE_RANGE
    if isinstance(panel_size, bool) or not isinstance(panel_size, numbers.Integral) or not low <= panel_size <= high:
        raise ValueError(f"The panel size must be an integer in [{low}, {high}] pixels, got {panel_size!r}.")
    return int(panel_size)


def explanation_panels(image: Image.Image, heatmap: np.ndarray, title: str = "", panel_size: int = 256) -> Image.Image:
    """Three panels side by side, `original | heat map | overlay`, each `panel_size` px, under a title line."""
    check_panel_size(panel_size)
    panels = [image.convert("RGB"), colorize(heatmap), overlay_heatmap(image, heatmap)]
    title_height = 20 if title else 0
    sheet = Image.new("RGB", (3 * panel_size, panel_size + title_height), (255, 255, 255))
    for position, panel in enumerate(panels):
        sheet.paste(
            panel.resize((panel_size, panel_size), Image.Resampling.BILINEAR), (position * panel_size, title_height)
        )
    if title:
        ImageDraw.Draw(sheet).text((4, 4), title, fill=(0, 0, 0))
    return sheet


__all__ = [
    "PANEL_SIZE_RANGE",
    "GradCamResult",
    "check_panel_size",
    "check_target_grade",
    "colorize",
    "explanation_panels",
    "grad_cam",
    "overlay_heatmap",
    "pixels_to_image",
    "target_scores",
]
