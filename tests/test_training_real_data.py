"""Training on the real EyePACS-256 photographs (tiny random backbone: a smoke test, not a clinical result).

Skipped, saying why, unless `RETINASCAN_REAL_DATA` points at the shared data folder (CI sets it). The
corpus is built by the corpus package from the published Kaggle layout, then the training split is
subsampled per grade so the test stays well under a minute.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from training_support import small_config
from transformers import pipeline

from retinascan_hf.corpus import build_corpus
from retinascan_hf.training import run_training

TRAIN_PER_GRADE = 60


@pytest.mark.real_data
def test_training_on_eyepacs_256_completes_and_exports_a_working_model(real_data_dir, tmp_path):
    build_corpus({"eyepacs": real_data_dir / "eyepacs-256"}, tmp_path / "full", num_proc=2, progress=False)
    full = datasets.load_from_disk(str(tmp_path / "full"))
    grades = full["train"]["grade"]
    keep = [row for grade in range(5) for row in [i for i, g in enumerate(grades) if g == grade][:TRAIN_PER_GRADE]]
    datasets.DatasetDict({**full, "train": full["train"].select(sorted(keep))}).save_to_disk(str(tmp_path / "corpus"))

    config = small_config(
        tmp_path / "out", data=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), num_epochs=5, n_per_class=8
    )
    result = run_training(config)

    metrics = result.metrics
    assert metrics["data"]["train"]["images"] == len(keep)
    assert metrics["data"]["test"]["images"] == len(full["test"]) > 200
    assert metrics["feature_cache"]["total"]["computed"] == 2 * len(keep) + len(full["validation"]) + len(full["test"])
    for report in metrics["evaluation"]["test"].values():
        confusion = np.asarray(report["confusion_matrix"])
        assert sum(row["support"] for row in report["per_grade"]) == confusion.sum() == len(full["test"])
        assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
        assert [row["support"] for row in report["per_grade"]] == confusion.sum(axis=1).tolist()
    grader = pipeline("retinascan", model=str(result.model_dir), trust_remote_code=True)
    photo = real_data_dir / "eyepacs-256" / "train" / f"{full['test'][0]['image_id'].removeprefix('eyepacs/')}.jpeg"
    graded = grader(str(photo), return_neighbors=True)
    assert graded["gradable"] and graded["neighbors"][0]["image_id"].startswith("eyepacs/")
