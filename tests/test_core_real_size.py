"""The real architecture (CLIP ViT-B/16, 224 px, 512-d) with random weights: shapes, save/load, pipeline.

Pretrained weights need the Hub; random weights exercise the same code, sizes and file formats.
"""

from __future__ import annotations

import pytest
import torch

from retinascan_hf import FeatureBank, RetinaScanModel, RetinaScanPipeline
from retinascan_hf.tiny_clip import random_retinascan, vit_b16_clip_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_size():
    return random_retinascan(clip_config=vit_b16_clip_config(), seed=0)


def test_real_size_forward_shapes(real_size, fundus_images):
    model, processor = real_size
    assert model.config.backbone_config.vision_config.patch_size == 16
    inputs = processor(fundus_images[:2])
    assert tuple(inputs["pixel_values"].shape) == (2, 3, 224, 224)
    with torch.no_grad():
        out = model(**inputs, labels=torch.tensor([0, 3]))
    assert out.image_features.shape == (2, 512) and out.embeddings.shape == (2, 512)
    assert out.ordinal_logits.shape == (2, 4) and out.prototype_logits.shape == (2, 5)
    assert torch.isfinite(out.loss)
    vision_parameters = sum(p.numel() for p in model.clip.vision_model.parameters())
    assert 85e6 < vision_parameters < 87e6  # ViT-B/16 image tower


@pytest.mark.real_data
def test_real_size_round_trip_and_pipeline_on_a_real_photo(real_size, tmp_path, real_data_dir):
    model, processor = real_size
    photo = sorted((real_data_dir / "eyepacs-originals" / "train").glob("*.jpeg"))[0]
    inputs = processor(str(photo))
    with torch.no_grad():
        expected = model(**inputs)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    FeatureBank(expected.embeddings.repeat(3, 1), [1, 1, 1], config_hash=model.config.embedding_hash()).save_pretrained(
        tmp_path
    )
    loaded = RetinaScanModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        actual = loaded(**inputs)
    assert torch.allclose(expected.embeddings, actual.embeddings, atol=1e-5)
    grader = RetinaScanPipeline(model=loaded, image_processor=processor, feature_bank=str(tmp_path))
    result = grader(str(photo), return_neighbors=True)
    assert result["gradable"] is True and result["grade"] == 1 and result["mode"] == "knn"
    assert result["neighbors"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)
