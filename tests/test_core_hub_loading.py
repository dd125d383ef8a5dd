"""A saved folder loads like a Hub model in a fresh process that never imports `retinascan_hf`.

This is exactly what a user of the Hub repo runs: Auto classes (`AutoModelForImageClassification` included),
`pipeline("retinascan")` and `pipeline("image-classification")` with `trust_remote_code=True`, from a folder and
from a repo id in the Hugging Face cache layout, offline. The remote-code model keeps its backbone frozen and
registers its pipeline task, so a model *object* can be given to `pipeline("retinascan")`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from retinascan_hf import ICDR_LABELS

FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from PIL import Image
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

    target, image_path = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(target, trust_remote_code=True)
    model = AutoModel.from_pretrained(target, trust_remote_code=True)
    classifier = AutoModelForImageClassification.from_pretrained(target, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(target, trust_remote_code=True)
    grader = pipeline("retinascan", model=target, trust_remote_code=True)
    result = grader(image_path, return_neighbors=True)
    # A model object loaded through remote code brings its pipeline task along.
    object_grader = pipeline("retinascan", model=model, image_processor=processor)
    classify = pipeline("image-classification", model=target, trust_remote_code=True)
    decision = classify.model(**classify.image_processor(image_path)).predicted_grade
    print(json.dumps({
        "config_class": type(config).__name__,
        "model_class": type(model).__name__,
        "classifier_class": type(classifier).__name__,
        "processor_class": type(processor).__name__,
        "pipeline_class": type(grader).__name__,
        "has_bank": grader.feature_bank is not None,
        "imported_package": "retinascan_hf" in sys.modules,
        "result": result,
        "clip_trainable": [
            any(p.requires_grad for p in loaded.clip.parameters()) for loaded in (model, classifier, grader.model)
        ],
        "heads_trainable": all(p.requires_grad for p in model.coral.parameters()),
        "attention": [model.config._attn_implementation, model.clip.vision_model.config._attn_implementation],
        "object_pipeline_class": type(object_grader).__name__,
        "object_result": object_grader(image_path),
        "classified": classify(image_path),
        "decision_label": config.id2label[int(decision[0])],
    }))
    """
)


def run_fresh(target: str, image_path: Path, env: dict[str, str]) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, target, str(image_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=image_path.parent,  # not the repo root: `retinascan_hf` must not be importable by accident
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture
def fresh_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONNOUSERSITE="1")
    return env


@pytest.fixture
def sample_image(tmp_path, fundus_images) -> Path:
    path = tmp_path / "sample.png"
    fundus_images[2].save(path)
    return path


def check(report: dict) -> None:
    assert report["imported_package"] is False
    assert report["config_class"] == "RetinaScanConfig" and report["model_class"] == "RetinaScanModel"
    assert report["classifier_class"] == "RetinaScanModel"
    assert report["processor_class"] == "RetinaScanImageProcessor"
    assert report["pipeline_class"] == "RetinaScanPipeline" and report["has_bank"] is True
    result = report["result"]
    assert result["mode"] == "knn" and result["grade"] == 2 and result["gradable"] is True
    assert result["neighbors"][0]["image_id"] == "synthetic/2"
    # freeze_backbone holds for AutoModel, AutoModelForImageClassification and the pipeline's model
    assert report["clip_trainable"] == [False, False, False] and report["heads_trainable"] is True
    assert report["attention"] == ["sdpa", "sdpa"]
    assert report["object_pipeline_class"] == "RetinaScanPipeline"
    assert report["object_result"]["grade"] == 2 and report["object_result"]["mode"] == "knn"
    classified = report["classified"]
    assert classified[0]["label"] == report["decision_label"]
    assert sorted(entry["label"] for entry in classified) == sorted(ICDR_LABELS)
    scores = [entry["score"] for entry in classified]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_saved_folder_declares_remote_code(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_retinascan.RetinaScanConfig",
        "AutoModel": "modeling_retinascan.RetinaScanModel",
        "AutoModelForImageClassification": "modeling_retinascan.RetinaScanModel",
    }
    assert config["custom_pipelines"]["retinascan"]["impl"] == "pipeline_retinascan.RetinaScanPipeline"
    processor = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert processor["auto_map"]["AutoImageProcessor"] == "image_processing_retinascan.RetinaScanImageProcessor"
    for name in (
        "configuration_retinascan.py",
        "modeling_retinascan.py",
        "image_processing_retinascan.py",
        "pipeline_retinascan.py",
        "feature_bank.py",
        "validation_retinascan.py",
    ):
        source = (model_dir / name).read_text()
        assert not re.search(r"^\s*(from|import)\s+retinascan_hf", source, re.M), f"{name}: relative imports only"


def test_fresh_process_loads_from_a_folder(model_dir, sample_image, fresh_env):
    check(run_fresh(str(model_dir), sample_image, fresh_env))


def test_fresh_process_loads_a_repo_id_from_the_hub_cache_offline(model_dir, sample_image, fresh_env):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(fresh_env["HF_HOME"]) / "hub" / "models--retina-org--retinascan-tiny"
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    check(run_fresh("retina-org/retinascan-tiny", sample_image, fresh_env))
