"""What a release weighs at the real ViT-B/16 size, and whether float16 storage changes any grade.

Sizes are of `model.safetensors` as `retinascan release` stages it: the full CLIP (OpenAI's 49,408-token text
vocabulary, so the text tower has its real size), without the text tower (the default), and without it in
float16. Agreement: real EyePACS photos graded through the float32 source and the float16 release (both load and
compute in float32; only the stored weights differ), with random weights at the real size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig

from benchmarks.timing import machine_summary
from retinascan_hf.configuration_retinascan import RetinaScanConfig
from retinascan_hf.image_processing_retinascan import RetinaScanImageProcessor
from retinascan_hf.modeling_retinascan import RetinaScanModel
from retinascan_hf.release import CardFacts
from retinascan_hf.release.stage import stage_release

OPENAI_TEXT_VOCABULARY = 49_408


def real_size_model(seed: int = 0) -> tuple[RetinaScanModel, RetinaScanImageProcessor]:
    """ViT-B/16 CLIP with OpenAI's text-tower size, random weights (their values do not change sizes)."""
    clip = CLIPConfig(
        vision_config={"patch_size": 16, "image_size": 224},
        text_config={"vocab_size": OPENAI_TEXT_VOCABULARY},
        projection_dim=512,
    )
    torch.manual_seed(seed)
    model = RetinaScanModel(RetinaScanConfig(backbone_config=clip)).eval()
    model.text_prototypes.copy_(torch.nn.functional.normalize(torch.randn_like(model.text_prototypes), dim=-1))
    return model, RetinaScanImageProcessor.for_backbone(clip)


def _weights_mib(folder: Path) -> float:
    return (folder / "model.safetensors").stat().st_size / 2**20


def run_release_benchmark(photos: list[Path]) -> dict[str, Any]:
    """Stage three releases of one real-size model and compare the float16 release's grades on `photos`."""
    from retinascan_hf.loading import load_pipeline

    model, processor = real_size_model()
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "source"
        model.save_pretrained(source)
        processor.save_pretrained(source)
        variants = {
            "full_float32": {"keep_text_tower": True, "storage_dtype": "float32"},
            "lean_float32": {"keep_text_tower": False, "storage_dtype": "float32"},
            "lean_float16": {"keep_text_tower": False, "storage_dtype": "float16"},
        }
        sizes = {}
        for name, options in variants.items():
            stage_release(source, Path(scratch) / name, CardFacts(repo_id=f"benchmark/{name}"), **options)
            sizes[name] = round(_weights_mib(Path(scratch) / name), 1)
        reference = load_pipeline(source, use_feature_bank=False)
        released = load_pipeline(Path(scratch) / "lean_float16", use_feature_bank=False)
        inputs = [str(photo) for photo in photos]
        expected = reference(inputs, mode="ordinal", batch_size=8)
        got = released(inputs, mode="ordinal", batch_size=8)
    graded = [(a, b) for a, b in zip(expected, got, strict=True) if a["gradable"] and b["gradable"]]
    agree = sum(a["grade"] == b["grade"] for a, b in graded)
    largest = max(
        (max(abs(x - y) for x, y in zip(a["scores"], b["scores"], strict=True)) for a, b in graded), default=0
    )
    return {
        "machine": machine_summary(),
        "model_safetensors_mib": sizes,
        "text_tower_share_of_full": round(1 - sizes["lean_float32"] / sizes["full_float32"], 3),
        "float16_agreement": {
            "photos": len(photos),
            "graded_by_both": len(graded),
            "same_grade": agree,
            "largest_score_difference": largest,
            "mode": "ordinal",
        },
    }


__all__ = ["run_release_benchmark"]
