"""`retinascan grade` and `load_pipeline`: grading a saved folder with the installed classes."""

from __future__ import annotations

import json

from retinascan_hf import RetinaScanPipeline, load_pipeline
from retinascan_hf.cli import main


def test_load_pipeline_uses_installed_classes_and_the_bank(model_dir, fundus_images):
    grader = load_pipeline(model_dir)
    assert type(grader) is RetinaScanPipeline  # no remote-code copy, no trust prompt
    assert grader(fundus_images[3])["grade"] == 3 and grader.feature_bank is not None
    assert load_pipeline(model_dir, use_feature_bank=False)(fundus_images[3])["mode"] == "ordinal"


def test_grade_command_prints_one_json_line_per_image(model_dir, fundus_images, tmp_path, capsys):
    good = tmp_path / "good.png"
    fundus_images[4].save(good)
    assert main(["grade", str(model_dir), str(good)]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["image"] == str(good) and line["grade"] == 4 and line["mode"] == "knn"
    assert main(["grade", str(model_dir), str(good), str(tmp_path / "missing.png"), "--mode", "ordinal"]) == 1
    lines = [json.loads(text) for text in capsys.readouterr().out.strip().splitlines()]
    assert [entry["gradable"] for entry in lines] == [True, False]
    assert lines[0]["mode"] == "ordinal" and "missing.png" in lines[1]["reason"]
