"""`pipeline("image-classification")` grades real EyePACS photographs in a process that never imports the package."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from retinascan_hf import ICDR_LABELS

CLASSIFY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline

    target, paths = sys.argv[1], sys.argv[2:]
    classify = pipeline("image-classification", model=target, trust_remote_code=True)
    ranked = classify(paths, batch_size=4)
    id2label = classify.model.config.id2label
    decisions = [id2label[int(classify.model(**classify.image_processor(path)).predicted_grade[0])] for path in paths]
    print(json.dumps({"imported_package": "retinascan_hf" in sys.modules, "ranked": ranked, "decisions": decisions}))
    """
)


def photos_per_grade(directory, per_grade: int) -> list[str]:
    chosen: dict[int, list[str]] = {grade: [] for grade in range(5)}
    with open(directory / "trainLabels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            grade = int(row["level"])
            if len(chosen[grade]) < per_grade:
                chosen[grade].append(str(directory / "train" / f"{row['image']}.jpeg"))
    return [path for paths in chosen.values() for path in paths]


@pytest.mark.real_data
def test_image_classification_pipeline_grades_real_photos_in_a_fresh_process(model_dir, real_data_dir, tmp_path):
    paths = photos_per_grade(real_data_dir / "eyepacs-256", per_grade=2)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONNOUSERSITE="1")
    completed = subprocess.run(
        [sys.executable, "-c", CLASSIFY_SCRIPT, str(model_dir), *paths],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the repo root: `retinascan_hf` must not be importable by accident
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["imported_package"] is False
    assert len(report["ranked"]) == len(paths) == 10
    for ranked, decision in zip(report["ranked"], report["decisions"], strict=True):
        assert sorted(entry["label"] for entry in ranked) == sorted(ICDR_LABELS)
        scores = [entry["score"] for entry in ranked]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert ranked[0]["label"] == decision  # top-1 is the model's own (ordinal) decision
