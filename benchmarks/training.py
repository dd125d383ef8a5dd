"""What the frozen-backbone feature cache buys, measured at the reference project's size on this machine.

The reference trains 50 epochs on 16,231 images with a frozen ViT-B/16 but pushes every image through the
backbone every epoch. Here the backbone runs once per image and view (the cache), and epochs train only the
heads. Baseline: one ViT-B/16 forward per image (random weights: speed does not depend on their values) at
the given batch size. Measured against it, in the same run: a forward+backward (what end-to-end fine-tuning
costs per image), and the real training loop (`RetinaScanTrainer`: balanced batches, AdamW, clipping, cosine
schedule, validation and a checkpoint every epoch) for 50 epochs over 16,231 cached 512-d features.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.inference import REFERENCE_TRAIN_SIZE
from benchmarks.timing import BenchmarkReport, Measurement, time_call
from retinascan_hf.synthetic import synthetic_fundus_set
from retinascan_hf.tiny_clip import random_retinascan, vit_b16_clip_config
from retinascan_hf.training.config import TrainingConfig
from retinascan_hf.training.splits import CachedSplit
from retinascan_hf.training.trainer import RetinaScanTrainer, make_accelerator

REFERENCE_EPOCHS = 50


def synthetic_feature_split(size: int, n_views: int, dim: int, seed: int) -> CachedSplit:
    """Random features with a grade offset, grades in the EyePACS proportions (so the sampler oversamples)."""
    generator = torch.Generator().manual_seed(seed)
    proportions = torch.tensor([0.73, 0.07, 0.15, 0.03, 0.02])
    grades = torch.multinomial(proportions, size, replacement=True, generator=generator)
    grades[:5] = torch.arange(5)  # every grade present
    features = torch.randn(size, n_views, dim, generator=generator) + grades[:, None, None] * 0.1
    return CachedSplit(features, grades, [f"bench/{i}" for i in range(size)], ["bench"] * size)


def run_training_benchmark(
    work_dir: str | Path,
    *,
    train_size: int = REFERENCE_TRAIN_SIZE,
    num_epochs: int = REFERENCE_EPOCHS,
    n_views: int = 4,
    batch_size: int = 16,
    repeats: int = 3,
) -> tuple[BenchmarkReport, dict[str, Any]]:
    """Measure; return the report (per-item times and ratios) and a summary of whole-run totals."""
    torch.manual_seed(0)
    model, processor = random_retinascan(clip_config=vit_b16_clip_config())
    report = BenchmarkReport(
        f"RetinaScan training, ViT-B/16 224 px, CPU, {train_size:,} images",
        baseline=f"backbone forward, batch {batch_size}",
    )
    images = synthetic_fundus_set([grade % 5 for grade in range(batch_size)], size=256)
    pixel_values = processor(images)["pixel_values"]
    with torch.inference_mode():
        forward = report.add(
            Measurement(
                report.baseline,
                time_call(lambda: model.forward_features(pixel_values), repeats=repeats),
                batch_size,
                "per image: what a frozen backbone costs every epoch without the cache",
            )
        )

    def forward_backward() -> None:
        model.clip.vision_model.requires_grad_(True)
        model.forward_features(pixel_values).float().sum().backward()
        model.zero_grad(set_to_none=True)
        model.clip.vision_model.requires_grad_(False)

    report.add(
        Measurement(
            f"backbone forward+backward, batch {batch_size}",
            time_call(forward_backward, repeats=max(1, repeats - 1)),
            batch_size,
            "per image: end-to-end fine-tuning",
        )
    )

    dim = model.config.embedding_dim
    train = synthetic_feature_split(train_size, n_views, dim, seed=1)
    validation = synthetic_feature_split(train_size // 10, 1, dim, seed=2)
    config = TrainingConfig(
        output_dir=str(work_dir), num_epochs=num_epochs, n_views=n_views, cpu=True, progress=False, seed=0
    )
    trainer = RetinaScanTrainer(model, config, train, validation, make_accelerator(config))
    started = time.perf_counter()
    trainer.train()
    head_seconds = time.perf_counter() - started
    report.add(
        Measurement(
            f"head training from the cache, {num_epochs} epochs",
            head_seconds,
            train_size * num_epochs,
            f"per image-epoch; {trainer.progress.global_step:,} steps incl. validation + checkpoint each epoch",
        )
    )
    report.finalize()

    epoch_seconds = forward.ms_per_item / 1000 * train_size
    summary = {
        "train_size": train_size,
        "num_epochs": num_epochs,
        "n_views": n_views,
        "optimizer_steps": trainer.progress.global_step,
        "backbone_forward_ms_per_image": forward.ms_per_item,
        "one_backbone_epoch_s": epoch_seconds,
        "reference_backbone_s": epoch_seconds * num_epochs,
        "feature_cache_build_s": epoch_seconds * n_views,
        "head_training_s": head_seconds,
        "head_training_all_epochs_per_backbone_epoch": head_seconds / epoch_seconds,
        "speedup_vs_recomputing_features_every_epoch": epoch_seconds
        * num_epochs
        / (epoch_seconds * n_views + head_seconds),
    }
    return report, summary


def format_summary(summary: dict[str, Any]) -> str:
    """The whole-run totals as a small table (extrapolated rows are marked)."""
    epochs, views = summary["num_epochs"], summary["n_views"]
    rows = [
        ("one epoch through ViT-B/16 (forward only, extrapolated)", summary["one_backbone_epoch_s"]),
        (
            f"reference: {epochs} epochs through the frozen backbone (extrapolated)",
            summary["reference_backbone_s"],
        ),
        (f"feature cache: {views} views per image, once (extrapolated)", summary["feature_cache_build_s"]),
        (f"head training, {epochs} epochs on cached features (measured)", summary["head_training_s"]),
    ]
    lines = [f"{'whole run, ' + format(summary['train_size'], ',') + ' images':<72} {'seconds':>10}"]
    lines += [f"{name:<72} {seconds:>10.1f}" for name, seconds in rows]
    lines.append(
        f"\n{epochs} epochs of head training take {summary['head_training_all_epochs_per_backbone_epoch']:.3f} of one "
        f"backbone epoch; cache + heads runs {summary['speedup_vs_recomputing_features_every_epoch']:.1f}x as fast as "
        "recomputing features every epoch."
    )
    return "\n".join(lines)


__all__ = [
    "format_summary",
    "run_training_benchmark",
    "synthetic_feature_split",
]
