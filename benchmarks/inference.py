"""What inference costs at the real ViT-B/16 size (random weights: speed does not depend on their values).

One run measures every row of the README's performance table, so each ratio's numerator and denominator come
from the same run on the same machine:

- compute: a bare fp32 matmul's GFLOP/s and the backbone's FLOPs per image, so latencies read as a fraction of
  what the CPU can do;
- bare forwards at batch 1 (all threads): torch fp32, bf16 (only where the CPU has bf16 instructions), torch
  dynamic int8, ONNX Runtime fp32 and int8;
- the int8 pipeline end to end on a 256-px JPEG (path -> grade, knn mode) against the bare int8 forward of its
  own session on the same pixels, the two timed in alternating blocks of 5 calls;
- decode + fundus crop + resize of a 12-MP camera original against a bare Pillow draft-mode decode at the
  processor's reduction scale (the processor decodes JPEG files in draft mode; every other input form is reduced
  by the same factor with a box filter), and the same with the pipeline's gradability check;
- batch throughput (8 and 32 images, decoding in parallel with inference) against the bare int8 forward, the
  two timed in turn;
- the kNN vote over banks of 16,231 and 1,000,000 rows (the bank's own API), with the large bank's memory;
- peak RSS of a fresh process that loads the model and grades one image, int8 ONNX and torch fp32.

`quick=True` runs the same code on a tiny model and small inputs in seconds (CI checks the output's shape).
"""

from __future__ import annotations

import functools
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.machine import has_fast_bf16, usable_cpus
from benchmarks.memory import peak_rss_of_grading
from benchmarks.results import Row, Target
from benchmarks.timing import current_rss_mib, time_alternately, time_call
from retinascan_hf.feature_bank import FeatureBank, OODReference
from retinascan_hf.image_processing_retinascan import RetinaScanImageProcessor
from retinascan_hf.loading import load_pipeline
from retinascan_hf.modeling_retinascan import RetinaScanModel
from retinascan_hf.onnx_backend import RetinaScanOnnxModel
from retinascan_hf.onnx_export import export_onnx
from retinascan_hf.synthetic import synthetic_fundus_set
from retinascan_hf.tiny_clip import random_retinascan, tiny_clip_config, vit_b16_clip_config

REFERENCE_TRAIN_SIZE = 16_231  # images in the reference GDRBench merge (APTOS, DDR, DeepDRiD, IDRiD, RLDR)
MILLION = 1_000_000


def decode_workers() -> int:
    """Preprocessing threads beside inference in the throughput rows: half the usable cores (at least one).
    ONNX Runtime's threads already take every core, so more decode threads than needed to keep ahead of
    inference only compete with it (on 2 cores, two decode threads were at times slower than decoding in turn)."""
    return max(1, usable_cpus() // 2)


STREAM_BATCHES = 4  # batches per throughput measurement: decoding overlaps inference from the second on


@dataclass
class InferenceSettings:
    """Sizes and repeats of one run; [`InferenceSettings.for_mode`] gives the full and quick presets."""

    quick: bool
    repeats: int
    warmup: int
    batch_sizes: tuple[int, ...]
    bank_size: int
    large_bank_size: int | None
    matmul_size: int
    threads: int

    @classmethod
    def for_mode(cls, quick: bool, threads: int, skip_large_bank: bool = False) -> InferenceSettings:
        if quick:
            return cls(True, 3, 1, (8, 32), 2_000, None if skip_large_bank else 20_000, 256, threads)
        return cls(False, 10, 2, (8, 32), REFERENCE_TRAIN_SIZE, None if skip_large_bank else MILLION, 2048, threads)


def matmul_gflops(size: int, repeats: int, warmup: int) -> float:
    """fp32 GFLOP/s of a square `size` matmul with all torch threads: the CPU's practical dense-compute peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = time_call(lambda: a @ b, repeats, warmup)
    return 2 * size**3 / seconds / 1e9


def backbone_gflop(model: torch.nn.Module, pixel_values: torch.Tensor) -> float:
    """GFLOP of one image through the image tower, counted by torch's FLOP counter (matmuls, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.forward_features(pixel_values[:1])
    return counter.get_total_flops() / 1e9


def build_model_folder(directory: Path, quick: bool, bank_size: int) -> Path:
    """A random-weight model folder (ViT-B/16, or tiny with `quick`) with a random bank of `bank_size` rows (and,
    as training writes it, the out-of-distribution reference every result's `ood_score` is measured against) and
    its fp32 and int8 ONNX exports."""
    clip_config = tiny_clip_config() if quick else vit_b16_clip_config()
    model, processor = random_retinascan(clip_config=clip_config, seed=0)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    FeatureBank(
        torch.randn(bank_size, model.config.embedding_dim, generator=generator),
        torch.randint(0, model.config.num_labels, (bank_size,), generator=generator),
        config_hash=model.config.embedding_hash(),
        ood_reference=OODReference.sample(torch.randn(bank_size, clip_config.projection_dim, generator=generator)),
    ).save_pretrained(directory)
    export_onnx(directory, int8=True)
    return directory


def _forward_rows(model_dir: Path, settings: InferenceSettings, pixel_values: torch.Tensor) -> list[Row]:
    """Bare batch-1 forwards of the image tower and heads in every runtime."""
    single = pixel_values[:1]

    def milliseconds(model: Any) -> float:
        with torch.inference_mode():
            return time_call(lambda: model(pixel_values=single), settings.repeats, settings.warmup) * 1e3

    torch_model = RetinaScanModel.from_pretrained(model_dir).eval()
    rows = [Row("torch_fp32", "torch fp32 forward, batch 1", milliseconds(torch_model), "ms")]
    if has_fast_bf16():
        bf16 = RetinaScanModel.from_pretrained(model_dir).to(torch.bfloat16).eval()
        rows.append(Row("torch_bf16", "torch bf16 forward, batch 1", milliseconds(bf16), "ms"))
        del bf16
    # The CLIP tower quantised, the heads fp32 (as in the int8 ONNX graph; `forward_head` reads fp32 weights).
    torch_model.clip = torch.ao.quantization.quantize_dynamic(torch_model.clip, {torch.nn.Linear}, dtype=torch.qint8)
    int8 = torch_model
    rows.append(Row("torch_int8", "torch dynamic int8 forward, batch 1", milliseconds(int8), "ms"))
    del int8, torch_model
    for variant in ("fp32", "int8"):
        onnx_model = RetinaScanOnnxModel.from_pretrained(model_dir, variant=variant, num_threads=settings.threads)
        rows.append(Row(f"ort_{variant}", f"ONNX Runtime {variant} forward, batch 1", milliseconds(onnx_model), "ms"))
    baseline = rows[0]
    for row in rows[1:]:
        row.relate(baseline, note="speed-up over torch fp32", invert=True)
    return rows


def _pipeline_rows(model_dir: Path, settings: InferenceSettings, jpeg: Path) -> list[Row]:
    """The int8 pipeline on one JPEG, path to grade, against the bare forward of its own ONNX session on that
    image's pixels, the two timed alternately (see `time_alternately`)."""
    grader = load_pipeline(model_dir, backend="onnx", onnx_variant="int8", onnx_threads=settings.threads)
    pixel_values = grader.image_processor(str(jpeg), return_tensors="pt")["pixel_values"]
    bare_seconds, pipeline_seconds = time_alternately(
        lambda: grader.model(pixel_values=pixel_values),
        lambda: grader(str(jpeg), mode="knn"),
        settings.repeats * 4,  # 40 calls a side at full size: two close times on a shared machine
        settings.warmup,
    )
    bare = Row(
        "ort_int8_paired",
        "ONNX Runtime int8 forward, batch 1, timed in alternating blocks with the pipeline",
        bare_seconds * 1e3,
        "ms",
    )
    row = Row("pipeline_int8_256px", "int8 pipeline end to end, one 256-px JPEG (knn)", pipeline_seconds * 1e3, "ms")
    row.relate(bare, target=Target("<=", 1.15), note="/ bare int8 forward, same session, alternating blocks")
    return [bare, row]


def _camera_rows(model_dir: Path, settings: InferenceSettings, photos: list[Path]) -> list[Row]:
    """Pillow's draft-mode decode alone (at the scale the processor decodes to) vs the processor's decode + fundus
    crop + resize, and with the gradability check the pipeline adds (`prepare`), same files."""
    processor = RetinaScanImageProcessor.from_pretrained(model_dir)
    target = processor.reduce_to

    def bare_decode() -> None:
        for photo in photos:
            with Image.open(photo) as image:
                image.draft("RGB", (target, target))
                image.load()

    def processed() -> None:
        for photo in photos:
            processor.to_model_image(photo)

    def prepared() -> None:
        for photo in photos:
            processor.prepare(photo)

    repeats, warmup = settings.repeats, settings.warmup
    with Image.open(photos[0]) as image:
        megapixels = image.width * image.height / 1e6
    per_photo = 1e3 / len(photos)
    bare_ms = time_call(bare_decode, repeats, warmup) * per_photo
    bare = Row("pillow_draft_decode", f"Pillow draft decode, {megapixels:.0f}-MP camera JPEG", bare_ms, "ms")
    crop_ms = time_call(processed, repeats, warmup) * per_photo
    crop = Row("decode_crop_resize", "decode + fundus crop + resize (processor), same JPEG", crop_ms, "ms")
    crop.relate(bare, target=Target("<=", 1.25), note="/ bare Pillow draft decode")
    check_ms = time_call(prepared, repeats, warmup) * per_photo
    check = Row("decode_crop_resize_quality", "the same + gradability check (pipeline preprocessing)", check_ms, "ms")
    check.relate(bare, note="/ bare Pillow draft decode")
    return [bare, crop, check]


def _throughput_rows(
    model_dir: Path, settings: InferenceSettings, jpegs: list[Path], pixel_values: torch.Tensor
) -> list[Row]:
    """Images/s of the bare int8 forward on ready tensors vs the pipeline on a stream of JPEG paths in batches,
    decoding in parallel (`num_workers` threads preprocess the next batch while the current one runs) and, for
    reference, in turn. A stream of several batches, since within one batch nothing can overlap inference."""
    grader = load_pipeline(model_dir, backend="onnx", onnx_variant="int8", onnx_threads=settings.threads)
    onnx_model = grader.model
    workers = decode_workers()
    rows = []
    for batch in settings.batch_sizes:
        tensors = pixel_values[:1].repeat(batch, 1, 1, 1)
        count = batch * STREAM_BATCHES
        paths = [str(path) for path in (jpegs * (count // len(jpegs) + 1))[:count]]
        repeats = max(2, settings.repeats // 3)

        def streamed(workers: int, paths: list[str] = paths, batch: int = batch) -> None:
            grader(paths, batch_size=batch, num_workers=workers)

        # The target's two sides timed in turn (see `time_alternately`); the in-turn decoding is for reference.
        bare_seconds, parallel_seconds = time_alternately(
            lambda tensors=tensors: onnx_model(pixel_values=tensors),
            functools.partial(streamed, workers),
            repeats,
            1,
            block=1,
        )
        label = f"ONNX Runtime int8 forward, batch {batch}"
        bare = Row(f"ort_int8_throughput_b{batch}", label, batch / bare_seconds, "images/s")
        rows.append(bare)
        in_turn_seconds = time_call(functools.partial(streamed, 0), repeats, 1)
        for parallel, seconds in ((workers, parallel_seconds), (0, in_turn_seconds)):
            mode = f"decoding in parallel (num_workers={parallel})" if parallel else "decoding in turn (num_workers=0)"
            row_id = f"pipeline_int8_throughput_b{batch}_{'parallel' if parallel else 'in_turn'}"
            label = f"int8 pipeline, {STREAM_BATCHES} batches of {batch} JPEGs, {mode}"
            row = Row(row_id, label, batch * STREAM_BATCHES / seconds, "images/s")
            row.relate(bare, target=Target(">=", 0.9) if parallel else None, note=f"/ bare batch-{batch} forward")
            rows.append(row)
    return rows


def _knn_rows(settings: InferenceSettings, dim: int) -> list[Row]:
    """Per-query time of the bank's exact kNN vote (its public API) at the reference size and at a million rows."""
    rows = []
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, dim, generator=generator)
    sizes = [settings.bank_size] + ([settings.large_bank_size] if settings.large_bank_size else [])
    for size in sizes:
        gc.collect()
        before = current_rss_mib()
        grades = torch.randint(0, 5, (size,), generator=generator)
        bank = FeatureBank(torch.randn(size, dim, generator=generator), grades)
        seconds = time_call(lambda bank=bank: bank.knn(query, k=10), settings.repeats * 2, settings.warmup)
        resident = current_rss_mib() - before
        note = f"process memory grew {resident:.0f} MiB with this bank" if size == settings.large_bank_size else ""
        label = f"kNN vote (k=10) over {size:,} x {dim}, one query"
        rows.append(Row(f"knn_{size}", label, seconds * 1e3, "ms", note=note))
        del bank, grades
    return rows


def _memory_rows(model_dir: Path, settings: InferenceSettings, jpeg: Path) -> list[Row]:
    rows = []
    for backend, label, limit in (("onnx", "int8 ONNX", 0.8 * 1024), ("torch", "torch fp32", 1.6 * 1024)):
        probe = peak_rss_of_grading(model_dir, jpeg, backend, settings.threads)
        text = f"peak RSS: load + grade one image, {label} (fresh process)"
        row = Row(f"peak_rss_{backend}", text, probe["peak_rss_mib"], "MiB")
        row.target = Target("<=", limit)
        row.met = row.value <= limit
        rows.append(row)
    return rows


def _camera_stand_ins(directory: Path) -> list[Path]:
    """A synthetic camera-sized JPEG for quick runs (real originals live outside the repository)."""
    path = directory / "camera.jpeg"
    picture = synthetic_fundus_set([2], size=1200, seed=3)[0]
    canvas = Image.new("RGB", (1600, 1200))
    canvas.paste(picture, (200, 0))
    canvas.save(path, quality=92)
    return [path]


def _small_jpegs(directory: Path, count: int) -> list[Path]:
    paths = []
    for index, image in enumerate(synthetic_fundus_set([index % 5 for index in range(count)], size=256, seed=4)):
        paths.append(directory / f"fundus_{index}.jpeg")
        image.save(paths[-1], quality=92)
    return paths


def run_inference_suite(
    work_dir: Path, settings: InferenceSettings, camera_photos: list[Path], small_jpegs: list[Path]
) -> tuple[list[Row], dict[str, Any]]:
    """All inference rows, and the compute figures (matmul GFLOP/s, backbone GFLOP per image)."""
    torch.set_num_threads(settings.threads)
    model_dir = build_model_folder(work_dir / "model", settings.quick, settings.bank_size)
    if not small_jpegs:
        small_jpegs = _small_jpegs(work_dir, 8)
    if not camera_photos:
        camera_photos = _camera_stand_ins(work_dir)
    processor = RetinaScanImageProcessor.from_pretrained(model_dir)
    pixel_values = processor([str(path) for path in small_jpegs[:1]])["pixel_values"]
    torch_model = RetinaScanModel.from_pretrained(model_dir).eval()
    compute = {
        "matmul_gflops": round(matmul_gflops(settings.matmul_size, settings.repeats, settings.warmup), 1),
        "matmul_size": settings.matmul_size,
        "backbone_gflop_per_image": round(backbone_gflop(torch_model, pixel_values), 3),
    }
    dim = torch_model.config.embedding_dim
    del torch_model
    rows = _forward_rows(model_dir, settings, pixel_values)
    for row in rows:
        row.fraction_of_peak = compute["backbone_gflop_per_image"] / (row.value / 1e3) / compute["matmul_gflops"]
    rows += _pipeline_rows(model_dir, settings, small_jpegs[0])
    rows += _camera_rows(model_dir, settings, camera_photos)
    rows += _throughput_rows(model_dir, settings, small_jpegs, pixel_values)
    rows += _knn_rows(settings, dim)
    rows += _memory_rows(model_dir, settings, small_jpegs[0])
    return rows, compute


__all__ = ["REFERENCE_TRAIN_SIZE", "InferenceSettings", "build_model_folder", "run_inference_suite"]
