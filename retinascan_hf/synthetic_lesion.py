"""A tiny RetinaScan trained in seconds to spot one bright lesion-like blob: a model whose explanation is known.

Grad-CAM can only be checked against a model whose evidence is known in advance. This one sees synthetic
healthy fundus images (grade-0 renders from [`synthetic`], optic disc and vessels included) with or without
one bright blob painted at a random place, and learns "blob" (grade 1) versus "no blob" (grade 0); its
heat map should sit on the blob wherever it is painted. The Grad-CAM test and the README example use it.

The backbone is trained too (not frozen, unlike the shipped default): a *random* frozen CLIP has no
localised features to explain, whereas a pretrained one has; training the tiny backbone end to end stands in
for that pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from .configuration_retinascan import RetinaScanConfig
from .image_processing_retinascan import RetinaScanImageProcessor
from .modeling_retinascan import RetinaScanModel
from .synthetic import render_fundus
from .tiny_clip import byte_level_clip_tokenizer, tiny_clip_config

BLOB_COLOUR = (255, 250, 200)
BLOB_LABELS = {0: "No lesion", 1: "Bright lesion"}
BLOB_DESCRIPTIONS = [
    "A fundus photograph of a healthy retina without lesions.",
    "A fundus photograph with one bright lesion.",
]


def paint_blob(image: Image.Image, centre: tuple[float, float], radius: float) -> Image.Image:
    """A copy of `image` with a bright round blob of `radius` px at `centre` `(x, y)`."""
    painted = image.convert("RGB")  # always a copy, never the caller's image
    x, y = centre
    ImageDraw.Draw(painted).ellipse([x - radius, y - radius, x + radius, y + radius], fill=BLOB_COLOUR)
    return painted


def random_blob_centre(size: int, rng: np.random.Generator, max_offset: float = 0.3) -> tuple[float, float]:
    """A point within `max_offset * size` of the centre of a `size` px fundus image: well inside the disc."""
    angle, distance = rng.uniform(0, 2 * np.pi), max_offset * size * np.sqrt(rng.uniform())
    return (size / 2 + distance * np.cos(angle), size / 2 + distance * np.sin(angle))


@dataclass
class BlobDetector:
    """The trained model (eval mode), its processor, and its held-out accuracy (ordinal head)."""

    model: RetinaScanModel
    processor: RetinaScanImageProcessor
    accuracy: float


def train_blob_detector(
    image_size: int = 64,
    patch_size: int = 8,
    num_layers: int = 1,
    steps: int = 250,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    num_backgrounds: int = 32,
    seed: int = 0,
) -> BlobDetector:
    """Train a tiny RetinaScan (backbone included) on blob / no-blob images; deterministic for a `seed`.

    Blobs are painted on the cropped, resized pictures the model sees, so every training step costs only a
    normalisation; radii span 4-7% of the image side (about half a patch).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clip_config = tiny_clip_config(
        image_size=image_size, patch_size=patch_size, hidden_size=32, num_layers=num_layers, projection_dim=32
    )
    config = RetinaScanConfig(
        backbone_config=clip_config,
        freeze_backbone=False,
        num_labels=2,
        id2label=dict(BLOB_LABELS),
        label2id={label: grade for grade, label in BLOB_LABELS.items()},
        grade_descriptions=list(BLOB_DESCRIPTIONS),
        referable_grade=1,
        projection_dropout=0.0,
    )
    model = RetinaScanModel(config)
    model.compute_text_prototypes(byte_level_clip_tokenizer())
    processor = RetinaScanImageProcessor.for_backbone(clip_config)
    backgrounds = [processor.to_model_image(render_fundus(0, size=image_size, rng=rng)) for _ in range(num_backgrounds)]

    def sample(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        pictures, labels = [], rng.integers(0, 2, size=count)
        for label in labels:
            picture = backgrounds[int(rng.integers(len(backgrounds)))]
            if label:
                radius = image_size * rng.uniform(0.04, 0.07)
                picture = paint_blob(picture, random_blob_centre(image_size, rng), radius)
            pictures.append(processor.normalize_image(picture))
        return torch.from_numpy(np.stack(pictures)), torch.from_numpy(labels)

    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate)
    threads = torch.get_num_threads()
    # Tensors this small gain nothing from intra-op threads, and on a busy machine lose 10-30x waiting for them.
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            pixel_values, labels = sample(batch_size)
            loss = model(pixel_values=pixel_values, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)  # hand over a model as from_pretrained would: no stale gradients
    model.eval()
    pixel_values, labels = sample(128)
    with torch.no_grad():
        accuracy = float((model(pixel_values=pixel_values).predicted_grade == labels).float().mean())
    return BlobDetector(model=model, processor=processor, accuracy=accuracy)


__all__ = ["BLOB_COLOUR", "BlobDetector", "paint_blob", "random_blob_centre", "train_blob_detector"]
