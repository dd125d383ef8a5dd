"""Build-time preprocessing on real photographs: the size it saves and the grades it keeps.

The camera originals in `../shared/data/eyepacs-originals` are 12-15 MP JPEGs of 1.2-1.5 MB; stored as the
512 px fundus crop they must take at most 15% of that. And a corpus preprocessed once must grade like the
originals: the model's input pixels, its embeddings and its grades are compared image by image (the
tolerances asserted here are the ones README documents; `scripts/benchmark_corpus_scale.py` measures the bytes
saved on the camera originals, `benchmarks/corpus_scale.json`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from retinascan_hf import FeatureBank, RetinaScanPipeline
from retinascan_hf.corpus import SPLITS, build_corpus
from retinascan_hf.corpus.preprocess import ImageStorage, Preprocessing
from retinascan_hf.image_processing_retinascan import RetinaScanImageProcessor
from retinascan_hf.tiny_clip import random_retinascan

pytestmark = pytest.mark.real_data


def test_camera_originals_at_512_px_take_at_most_15_percent(real_data_dir: Path, tmp_path: Path) -> None:
    source = real_data_dir / "eyepacs-originals"
    storage = ImageStorage(preprocessing=Preprocessing(512))
    report = build_corpus({"eyepacs": source}, tmp_path / "corpus", storage=storage, num_proc=2, progress=False)
    originals = sum(path.stat().st_size for path in (source / "train").glob("*.jpeg"))
    assert report.num_kept == 10 and report.storage["source_bytes"] == originals
    assert report.storage["stored_bytes"] <= 0.15 * originals
    corpus = datasets.load_from_disk(str(tmp_path / "corpus"))
    for split in SPLITS:
        for row in corpus[split].cast_column("image", datasets.Image(decode=False)):
            assert Image.open(io.BytesIO(row["image"]["bytes"])).size == (512, 512)


def preprocessed(paths: list[str], size: int) -> list[bytes]:
    settings = Preprocessing(size)
    return [settings.encode(settings.processor().to_model_image(path)) for path in paths]


def test_preprocessed_pictures_grade_like_the_originals(real_data_dir: Path) -> None:
    originals = sorted(str(path) for path in (real_data_dir / "eyepacs-originals" / "train").glob("*.jpeg"))
    photos = real_data_dir / "eyepacs-256"
    with open(photos / "trainLabels.csv", newline="") as handle:
        grades = {row["image"]: int(row["level"]) for row in csv.DictReader(handle)}
    names = sorted(grades)
    queries = [str(photos / "train" / f"{name}.jpeg") for name in names[300:400]]

    pixels = RetinaScanImageProcessor(size=224)
    for path, data in zip(originals, preprocessed(originals, 512), strict=True):
        delta = (pixels(path)["pixel_values"] - pixels(data)["pixel_values"]).abs()
        assert delta.mean() < 0.05, path  # ~2 grey levels on average (CLIP-normalised units)

    torch.manual_seed(0)
    model, processor = random_retinascan(seed=0)
    model.eval()
    with torch.no_grad():
        bank_paths = [str(photos / "train" / f"{name}.jpeg") for name in names[:300]]
        embeddings = torch.cat([model(**processor(bank_paths[i : i + 100])).embeddings for i in range(0, 300, 100)])
    bank = FeatureBank(embeddings, [grades[name] for name in names[:300]])
    grader = RetinaScanPipeline(model=model, image_processor=processor, feature_bank=bank)
    for paths, size in ((originals, 512), (queries, 256)):
        data = preprocessed(paths, size)
        with torch.no_grad():
            cosine = torch.nn.functional.cosine_similarity(
                model(**processor(paths)).embeddings, model(**processor(data)).embeddings
            )
        assert cosine.min() > 0.998
        # A random backbone separates grades poorly, so close kNN votes flip on small feature changes: a worst case.
        for mode, agreement in (("knn", 0.9), ("ordinal", 0.98)):
            pairs = zip(grader(paths, mode=mode, batch_size=50), grader(data, mode=mode, batch_size=50), strict=True)
            same = [a["grade"] == b["grade"] for a, b in pairs]
            assert sum(same) >= agreement * len(same), (mode, size, sum(same))
