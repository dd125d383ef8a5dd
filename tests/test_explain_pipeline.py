"""`pipeline(..., return_heatmap=True)`: maps beside unchanged grades, batching, bad inputs, remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from retinascan_hf.gradcam_retinascan import overlay_heatmap


@pytest.fixture(scope="module")
def grader(model_dir):
    from retinascan_hf import load_pipeline

    return load_pipeline(model_dir)


@pytest.mark.parametrize("mode", ["knn", "ordinal", "prototype"])
def test_heatmaps_come_with_the_same_grades_and_scores(grader, fundus_images, mode):
    plain = grader(fundus_images[:4], mode=mode)
    explained = grader(fundus_images[:4], mode=mode, return_heatmap=True)
    size = grader.image_processor.output_size
    for image, a, b in zip(fundus_images[:4], plain, explained, strict=True):
        assert b["grade"] == a["grade"] and b["scores"] == pytest.approx(a["scores"], abs=1e-5)
        heatmap = b["heatmap"]
        assert isinstance(heatmap, np.ndarray) and heatmap.dtype == np.float32 and heatmap.shape == (size, size)
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
        # the overlay is the heat map on exactly the picture the model saw
        picture = grader.image_processor.to_model_image(image)
        assert isinstance(b["overlay"], Image.Image) and b["overlay"].size == (size, size)
        expected = np.asarray(overlay_heatmap(picture, heatmap), np.int16)
        assert np.abs(np.asarray(b["overlay"], np.int16) - expected).max() <= 1
        assert "heatmap" not in a and "overlay" not in a


def test_batching_and_bad_inputs(grader, fundus_images, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    inputs = [fundus_images[0], str(corrupt), fundus_images[3], np.zeros((40, 40, 3), np.uint8), fundus_images[4]]
    single = [grader(item, return_heatmap=True) for item in inputs]
    batched = grader(inputs, return_heatmap=True, batch_size=3)
    for one, many in zip(single, batched, strict=True):
        assert one["gradable"] == many["gradable"]
        if not one["gradable"]:
            assert "heatmap" not in many and many["error_type"] in ("InvalidImageError", "NoFundusFoundError")
            continue
        assert one["grade"] == many["grade"]
        np.testing.assert_allclose(one["heatmap"], many["heatmap"], atol=1e-4)
    assert [r["gradable"] for r in batched] == [True, False, True, False, True]
    batched[0]["heatmap"][:] = 0.5  # each result owns its array
    assert not np.allclose(batched[2]["heatmap"], 0.5)


def test_requested_grade(grader, fundus_images):
    decided = grader(fundus_images[2], mode="ordinal", return_heatmap=True)
    for grade in range(1, 5):  # CORAL: every grade >= 1 has the map of "more severe" (module docstring)
        other = grader(fundus_images[2], mode="ordinal", return_heatmap=True, heatmap_grade=grade)
        assert other["grade"] == decided["grade"]
        if decided["grade"] >= 1:
            np.testing.assert_allclose(other["heatmap"], decided["heatmap"], atol=1e-4)
    zero = grader(fundus_images[2], mode="ordinal", return_heatmap=True, heatmap_grade=0)
    assert not np.allclose(
        zero["heatmap"],
        grader(fundus_images[2], mode="ordinal", return_heatmap=True, heatmap_grade=1)["heatmap"],
        atol=1e-2,
    )


@pytest.mark.parametrize(
    "options",
    [
        {"heatmap_grade": 1},
        {"return_heatmap": True, "heatmap_grade": 5},
        {"return_heatmap": True, "heatmap_grade": 1.0},
    ],
)
def test_bad_heatmap_options_raise(grader, fundus_images, options):
    with pytest.raises(ValueError, match=r"heatmap_grade|grade to explain"):
        grader(fundus_images[0], **options)


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline

    grader = pipeline("retinascan", model=sys.argv[1], trust_remote_code=True)
    result = grader(sys.argv[2], return_heatmap=True)
    print(json.dumps({
        "imported_package": "retinascan_hf" in sys.modules,
        "grade": result["grade"],
        "heatmap_shape": list(result["heatmap"].shape),
        "heatmap_max": float(result["heatmap"].max()),
        "overlay_size": list(result["overlay"].size),
    }))
    """
)


@pytest.mark.slow  # a fresh Python process importing transformers
def test_remote_code_serves_heatmaps_without_the_package(model_dir, fundus_images, tmp_path):
    """The Grad-CAM module travels with the pipeline's remote code: a Hub user gets maps too."""
    assert (model_dir / "gradcam_retinascan.py").is_file()
    image = tmp_path / "sample.png"
    fundus_images[3].save(image)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONNOUSERSITE="1")
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(model_dir), str(image)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {
        "imported_package": False,
        "grade": 3,
        "heatmap_shape": [32, 32],
        "heatmap_max": pytest.approx(1.0),
        "overlay_size": [32, 32],
    }


def test_transformers_pipeline_factory_accepts_the_option(model_dir, fundus_images):
    grader = pipeline("retinascan", model=str(model_dir), trust_remote_code=True, return_heatmap=True)
    assert grader(fundus_images[1])["heatmap"].shape == (32, 32)
