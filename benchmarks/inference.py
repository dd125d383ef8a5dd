"""What inference costs at the real ViT-B/16 size (random weights) on this machine.

Baseline: one backbone (ViT-B/16) forward per image at batch 8. Everything else is a ratio to it:
the trainable heads on cached features (why training caches backbone features), the whole pipeline on
real 12-16 MP camera JPEGs (decode + crop + forward), the processor's decode (a full decode reduced by a box
filter, identical for every input form) versus PIL's full and DCT-scaled (draft) decodes, and the exact kNN
vote over a bank the size of the reference training set.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from benchmarks.timing import BenchmarkReport, Measurement, time_call
from retinascan_hf.feature_bank import FeatureBank
from retinascan_hf.pipeline_retinascan import RetinaScanPipeline
from retinascan_hf.synthetic import synthetic_fundus_set
from retinascan_hf.tiny_clip import random_retinascan, vit_b16_clip_config

REFERENCE_TRAIN_SIZE = 16_231  # images in the reference GDRBench merge (APTOS, DDR, DeepDRiD, IDRiD, RLDR)


def _decode_full(path: Path) -> None:
    with Image.open(path) as image:
        image.load()


def _decode_draft(path: Path, size: int) -> None:
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image.load()


def run_inference_benchmark(camera_photos: list[Path], batch_size: int = 8, repeats: int = 3) -> BenchmarkReport:
    """Measure and return the report; `camera_photos` may be empty (then the JPEG rows are skipped)."""
    torch.manual_seed(0)
    model, processor = random_retinascan(clip_config=vit_b16_clip_config())
    report = BenchmarkReport(
        "RetinaScan inference, ViT-B/16 224 px, CPU", baseline=f"backbone forward, batch {batch_size}"
    )
    pixel_values = processor(synthetic_fundus_set(list(range(5)) * 2, size=256)[:batch_size])["pixel_values"]

    with torch.inference_mode():
        report.add(
            Measurement(
                f"backbone forward, batch {batch_size}",
                time_call(lambda: model.forward_features(pixel_values), repeats=repeats),
                batch_size,
            )
        )
        single = pixel_values[:1]
        report.add(Measurement("backbone forward, batch 1", time_call(lambda: model.forward_features(single), repeats)))
        features = model.forward_features(pixel_values)
        report.add(
            Measurement(
                f"heads on cached features, batch {batch_size}",
                time_call(lambda: model.forward_head(features), repeats=20),
                batch_size,
                "what each training step costs with the feature cache",
            )
        )
        bank = FeatureBank(torch.randn(REFERENCE_TRAIN_SIZE, 512), torch.randint(0, 5, (REFERENCE_TRAIN_SIZE,)))
        queries = model.forward_head(features).embeddings
        report.add(
            Measurement(
                f"kNN vote, k=10, bank of {REFERENCE_TRAIN_SIZE:,}",
                time_call(lambda: bank.knn(queries, k=10), repeats=20),
                batch_size,
            )
        )

    if camera_photos:
        photo = camera_photos[0]
        with Image.open(photo) as image:
            megapixels = image.width * image.height / 1e6
        report.add(
            Measurement(
                "JPEG full decode", time_call(lambda: _decode_full(photo), repeats), note=f"{megapixels:.1f} MP"
            )
        )
        draft = processor.output_size * processor.DECODE_OVERSAMPLING
        report.add(Measurement("JPEG draft decode", time_call(lambda: _decode_draft(photo, draft), repeats)))
        report.add(Measurement("processor decode (full + reduce)", time_call(lambda: processor.load(photo), repeats)))
        report.add(
            Measurement(
                "processor decode + fundus crop + resize",
                time_call(lambda: processor.to_model_image(photo), repeats),
                note="what the processor does",
            )
        )
        grader = RetinaScanPipeline(model=model, image_processor=processor, feature_bank=bank)
        photos = [str(p) for p in camera_photos[:batch_size]]
        report.add(
            Measurement(
                f"pipeline end to end, {len(photos)} camera JPEGs",
                time_call(lambda: grader(photos, batch_size=batch_size), repeats=repeats),
                len(photos),
                "decode + crop + ViT-B/16 + kNN",
            )
        )
    report.finalize()
    return report
