"""Fundus-safe augmentation on the model-size PIL picture, reproducible per (seed, image id, view).

A fundus has no canonical up (left and right eyes mirror each other, cameras rotate), so flips and
rotations about the centre of the cropped disc are label-preserving; brightness and contrast vary with
camera and pupil. Nothing here crops, warps or tints: that could hide or fake the small red and yellow
lesions the grade depends on. Contrast is stretched around the mean of the *fundus* pixels and the black
surround stays black, so an augmented picture still looks like what the fundus cropper produces.

Each view is a pure function of `(seed, image_id, view)`: cached features are reproducible, and a view's
features never have to be recomputed because an unrelated image was added to the corpus.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

_BACKGROUND_LEVEL = 10  # brightest channel at or below this (0-255) is the black surround, not fundus


def view_rng(seed: int, image_id: str, view: int) -> np.random.Generator:
    """A generator determined by `(seed, image_id, view)` alone (not by iteration order or process)."""
    digest = int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, view, digest])


@dataclass(frozen=True)
class FundusAugmentation:
    """Random flips, rotation and brightness/contrast jitter of a cropped fundus picture.

    Args:
        flip: flip horizontally and vertically, each with probability 0.5.
        rotation: rotate by a uniform angle in `[-rotation, rotation]` degrees about the centre.
        brightness: multiply intensities by a factor in `[1 - brightness, 1 + brightness]`.
        contrast: stretch fundus pixels around their mean by a factor in `[1 - contrast, 1 + contrast]`.
    """

    flip: bool = True
    rotation: float = 180.0
    brightness: float = 0.2
    contrast: float = 0.2

    def __call__(self, picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        if self.flip and rng.random() < 0.5:
            picture = ImageOps.mirror(picture)
        if self.flip and rng.random() < 0.5:
            picture = ImageOps.flip(picture)
        if self.rotation:
            angle = rng.uniform(-self.rotation, self.rotation)
            picture = picture.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        if self.brightness or self.contrast:
            picture = self._jitter(picture, rng)
        return picture

    def _jitter(self, picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        brightness = rng.uniform(1 - self.brightness, 1 + self.brightness)
        contrast = rng.uniform(1 - self.contrast, 1 + self.contrast)
        pixels = np.asarray(picture, dtype=np.float32)
        fundus = pixels.max(axis=-1) > _BACKGROUND_LEVEL
        if not fundus.any():
            return picture
        mean = pixels[fundus].mean(axis=0)
        jittered = (mean + contrast * (pixels - mean)) * brightness
        jittered = np.where(fundus[..., None], jittered, 0.0)
        return Image.fromarray(np.clip(np.rint(jittered), 0, 255).astype(np.uint8), "RGB")

    def view(self, picture: Image.Image, *, seed: int, image_id: str, view: int) -> Image.Image:
        """View `view` of an image: view 0 is the picture itself, every other view a seeded augmentation."""
        if view == 0:
            return picture
        return self(picture, view_rng(seed, image_id, view))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["FundusAugmentation", "view_rng"]
