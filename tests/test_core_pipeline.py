"""pipeline("retinascan"): inputs, modes, batching, bad items, and fallback without a bank."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import pipeline
from transformers.testing_utils import CaptureLogger

from retinascan_hf import FeatureBank, RetinaScanPipeline
from retinascan_hf.pipeline_retinascan import logger
from retinascan_hf.synthetic import render_fundus

RESULT_KEYS = {"grade", "label", "scores", "referable", "mode", "gradable"}


@pytest.fixture(scope="module")
def grader(model_dir):
    return pipeline("retinascan", model=str(model_dir), trust_remote_code=True)


def assert_valid_result(result, mode):
    assert result.keys() >= RESULT_KEYS
    assert result["gradable"] is True and result["mode"] == mode
    assert isinstance(result["grade"], int) and 0 <= result["grade"] <= 4
    assert len(result["scores"]) == 5 and sum(result["scores"]) == pytest.approx(1.0, abs=1e-5)
    assert result["referable"] == (result["grade"] >= 2)


def test_knn_is_the_default_and_recovers_bank_images(grader, fundus_images):
    # Each image is in the bank with its true grade; distance weighting makes the exact match decide.
    results = grader(fundus_images)
    assert [r["grade"] for r in results] == [0, 1, 2, 3, 4] * 2
    for result in results:
        assert_valid_result(result, "knn")
    assert results[2]["label"] == "Moderate NPDR"


def test_neighbors_are_returned_nearest_first_with_ids(grader, fundus_images):
    result = grader(fundus_images[3], k=4, return_neighbors=True)
    neighbors = result["neighbors"]
    assert len(neighbors) == 4
    assert neighbors[0]["image_id"] == "synthetic/3" and neighbors[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    similarities = [n["similarity"] for n in neighbors]
    assert similarities == sorted(similarities, reverse=True)


@pytest.mark.parametrize("mode", ["ordinal", "prototype"])
def test_other_modes_match_the_model_heads(grader, fundus_images, mode):
    model = grader.model
    with torch.no_grad():
        out = model(**grader.image_processor(fundus_images[:3]))
    results = grader(fundus_images[:3], mode=mode)
    for index, result in enumerate(results):
        assert_valid_result(result, mode)
        if mode == "ordinal":
            expected_scores, expected_grade = out.probs[index], int(out.predicted_grade[index])
        else:
            expected_scores = torch.softmax(out.prototype_logits[index], -1)
            expected_grade = int(expected_scores.argmax())
        assert result["scores"] == pytest.approx(expected_scores.tolist(), abs=1e-5)
        assert result["grade"] == expected_grade


def test_ordinal_mode_uses_calibrated_thresholds(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    grader = RetinaScanPipeline(model=model, image_processor=processor, feature_bank=False)
    original = list(model.config.coral_thresholds)
    try:
        model.config.coral_thresholds = [-100.0] * 4
        assert {r["grade"] for r in grader(fundus_images[:3], mode="ordinal")} == {4}
        model.config.coral_thresholds = [100.0] * 4
        assert {r["grade"] for r in grader(fundus_images[:3], mode="ordinal")} == {0}
    finally:
        model.config.coral_thresholds = original


@pytest.mark.parametrize("batch_size", [1, 3])
def test_bad_items_are_flagged_and_the_rest_still_graded(grader, fundus_images, tmp_path, batch_size):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    inputs = [fundus_images[0], str(corrupt), np.zeros((64, 64, 3), np.uint8), fundus_images[4], 12345]
    results = grader(inputs, batch_size=batch_size)
    assert len(results) == 5
    assert results[0]["grade"] == 0 and results[3]["grade"] == 4
    for index, error_type in ((1, "InvalidImageError"), (2, "NoFundusFoundError"), (4, "InvalidImageError")):
        assert results[index]["gradable"] is False and results[index]["grade"] is None
        assert results[index]["error_type"] == error_type
    assert "corrupt.jpg" in results[1]["reason"]
    assert "No visible fundus" in results[2]["reason"]


@pytest.mark.parametrize("mode", ["knn", "ordinal", "prototype"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_batching_does_not_change_results(grader, fundus_images, batch_size, mode):
    single = [grader(image, mode=mode) for image in fundus_images[:5]]
    batched = grader(fundus_images[:5], mode=mode, batch_size=batch_size)
    # kNN's distance weights amplify float rounding between batch shapes near similarity 1: looser there
    tolerance = 2e-3 if mode == "knn" else 1e-5
    for a, b in zip(single, batched, strict=True):
        assert a["grade"] == b["grade"] and a["scores"] == pytest.approx(b["scores"], abs=tolerance)


def test_path_and_numpy_inputs(grader, tmp_path):
    image = render_fundus(2, size=80, rng=np.random.default_rng(9))
    path = tmp_path / "fundus.png"
    image.save(path)
    from_path, from_str, from_array = grader(path), grader(str(path)), grader(np.asarray(image))
    assert from_path["scores"] == pytest.approx(from_array["scores"], abs=1e-5)
    assert from_str["grade"] == from_path["grade"]


def test_without_a_bank_knn_falls_back_to_ordinal_with_a_warning(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    with CaptureLogger(logger) as captured:
        grader = RetinaScanPipeline(model=model, image_processor=processor, feature_bank=False)
        assert grader(fundus_images[0])["mode"] == "ordinal"  # no bank by request: silently
    assert captured.out == ""
    with CaptureLogger(logger) as captured:
        assert grader(fundus_images[0], mode="knn")["mode"] == "ordinal"
    assert "mode='knn' needs a feature bank" in captured.out


def test_incompatible_bank_is_refused_with_both_dims(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    wrong = FeatureBank(torch.randn(5, 7), [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"7-d.*32-d"):
        RetinaScanPipeline(model=model, image_processor=processor, feature_bank=wrong)


@pytest.mark.parametrize(("kwargs", "error"), [({"mode": "magic"}, ValueError), ({"k": 0}, ValueError)])
def test_bad_options_raise(grader, fundus_images, kwargs, error):
    with pytest.raises(error):
        grader(fundus_images[0], **kwargs)


def test_pipeline_save_pretrained_writes_a_complete_folder(grader, tmp_path, fundus_images):
    grader.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "feature_bank.safetensors"} <= names
    assert {"modeling_retinascan.py", "pipeline_retinascan.py", "feature_bank.py"} <= names
    reloaded = pipeline("retinascan", model=str(tmp_path), trust_remote_code=True)
    assert reloaded(fundus_images[1])["grade"] == 1


def test_url_inputs_are_fetched_and_http_errors_flagged(grader, fundus_images, tmp_path):
    """A URL served from loopback (never the network): graded like the file; a 404 is a flagged item."""
    import functools
    import http.server
    import threading

    fundus_images[4].save(tmp_path / "fundus.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        results = grader([f"{base}/fundus.png", f"{base}/missing.png"], timeout=10)
    finally:
        server.shutdown()
    assert results[0]["grade"] == grader(str(tmp_path / "fundus.png"))["grade"] == 4
    assert results[1]["gradable"] is False and results[1]["error_type"] == "ImageDownloadError"
    assert "missing.png" in results[1]["reason"]


def test_bank_comes_from_the_same_revision_as_the_weights(model_dir, tmp_path, fundus_images):
    """Two commits of one Hub repo (cache layout, offline): revision B's bank says grade 4 for everything."""
    from retinascan_hf import RetinaScanImageProcessor, RetinaScanModel

    repo = tmp_path / "hub" / "models--org--grader"
    main_commit, other_commit = "a" * 40, "b" * 40
    shutil.copytree(model_dir, repo / "snapshots" / main_commit)
    shutil.copytree(model_dir, repo / "snapshots" / other_commit)
    bank = FeatureBank.from_pretrained(model_dir)
    FeatureBank(bank.embeddings, [4] * len(bank), config_hash=bank.config_hash).save_pretrained(
        repo / "snapshots" / other_commit
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main_commit)
    graded = {}
    for commit in (main_commit, other_commit):
        model = RetinaScanModel.from_pretrained("org/grader", revision=commit, cache_dir=tmp_path / "hub")
        processor = RetinaScanImageProcessor.from_pretrained(model_dir)
        graded[commit] = [
            r["grade"] for r in RetinaScanPipeline(model=model, image_processor=processor)(fundus_images[:5])
        ]
    assert graded == {main_commit: [0, 1, 2, 3, 4], other_commit: [4, 4, 4, 4, 4]}
