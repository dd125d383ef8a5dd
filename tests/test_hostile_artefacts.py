"""Tampered, corrupt or incomplete model folders fail when loaded, naming the file and the field.

Each case is a defect of issue 7 (items 1, 9, 10): before, NaN temperatures or thresholds, NaN/inf weights or
bank rows, a zero `feature_std` or `image_std` loaded silently and graded every image "No DR" with NaN scores;
`size: -5` crashed inside the error handler, `size: 60000` allocated 43 GB; a bank voting over another number
of grades, or an `id2label` missing a grade, crashed on the first image; corrupt safetensors files were
reported without their name, and a folder without `config.json` was loaded as a default ViT-B/16.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_support import bank_path, build_model_folder, copy_folder, edit_json, edit_safetensors, read_tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoImageProcessor

from retinascan_hf import RetinaScanConfig, RetinaScanImageProcessor, RetinaScanModel, load_pipeline
from retinascan_hf.cli import main
from retinascan_hf.commands.grade import json_safe
from retinascan_hf.evaluation import evaluate_model
from retinascan_hf.feature_bank import FeatureBank, FeatureBankMismatchError
from retinascan_hf.release import CardFacts
from retinascan_hf.release.stage import stage_release
from retinascan_hf.validation_retinascan import InvalidArtefactError

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory, fundus_images):
    return build_model_folder(tmp_path_factory.mktemp("clean"), fundus_images)


@pytest.fixture
def folder(clean_folder, tmp_path):
    """A private copy of the clean folder, to tamper with."""
    return copy_folder(clean_folder, tmp_path / "model")


def test_the_clean_folder_loads_and_grades(folder, fundus_images):
    result = load_pipeline(folder)(fundus_images[2])
    assert result["gradable"] is True and result["grade"] == 2 and math.isfinite(result["ood_score"])


# --- config.json -----------------------------------------------------------------------------------------------

CONFIG_CASES = [
    ("ordinal_temperature", NAN),
    ("ordinal_temperature", -1.0),
    ("prototype_temperature", INF),
    ("prototype_calibration_temperature", 0),
    ("coral_thresholds", [0.0, NAN, 0.0, 0.0]),
    ("coral_thresholds", [0.0, 0.0]),
    ("coral_thresholds", "0,0,0,0"),
    ("knn_k", 0),
    ("knn_k", 2.5),
    ("knn_k", "10"),
    ("knn_k", True),
    ("knn_weighting", "magic"),
    ("ood_threshold", NAN),
    ("ood_threshold", -2.0),
    ("referable_grade", 7),
    ("projection_dropout", 1.5),
    ("focal_gamma", -INF),
    ("freeze_backbone", "yes"),
    ("id2label", {"0": "a", "1": "b", "2": "c", "3": "d", "5": "e"}),
    ("grade_descriptions", ["a", "b", "c", "d", 5]),
]


@pytest.mark.parametrize(("field", "value"), CONFIG_CASES, ids=[f"{f}={v!r}" for f, v in CONFIG_CASES])
def test_tampered_config_fails_at_load_naming_file_and_field(folder, field, value):
    edit_json(folder / "config.json", **{field: value})
    with pytest.raises(InvalidArtefactError) as info:
        RetinaScanConfig.from_pretrained(folder)
    assert "config.json" in str(info.value) and info.value.field.split("[")[0] == field


@pytest.mark.parametrize(
    ("tower", "field", "value"),
    [
        ("vision_config", "image_size", 60000),
        ("vision_config", "patch_size", 0),
        ("vision_config", "num_hidden_layers", 10**6),
        ("text_config", "vocab_size", 10**9),
        ("text_config", "hidden_size", -32),
    ],
)
def test_backbone_sizes_that_would_exhaust_memory_fail_at_load(folder, tower, field, value):
    """A tampered backbone size must fail before model construction allocates anything."""
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"][tower][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidArtefactError, match=rf"config\.json: backbone_config\.{tower}\.{field}"):
        load_pipeline(folder)


def test_a_tampered_config_stops_the_whole_loader(folder):
    edit_json(folder / "config.json", ordinal_temperature=NAN)
    with pytest.raises(InvalidArtefactError, match=r"config\.json: ordinal_temperature"):
        load_pipeline(folder)


FLOAT_FIELDS = (
    "ordinal_temperature",
    "prototype_temperature",
    "prototype_calibration_temperature",
    "ood_threshold",
    "coral_loss_weight",
    "initializer_range",
)


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(FLOAT_FIELDS),
    value=st.one_of(
        st.sampled_from([NAN, INF, -INF]),
        st.floats(max_value=0.0, allow_nan=False),
        st.text(max_size=4),
        st.booleans(),
        st.lists(st.floats(), max_size=2),
    ),
)
def test_any_non_finite_or_non_positive_float_field_is_refused(clean_folder, field, value):
    """Property: every temperature/weight/threshold refuses NaN, inf, text, booleans, lists and (where it must be
    positive) zero or negative values: the defect was that `nan <= 0` is false."""
    if field in ("coral_loss_weight", "initializer_range") and isinstance(value, float) and value == 0.0:
        value = -1.0  # zero is a valid weight; a negative one is not
    with tempfile.TemporaryDirectory() as directory:  # a fresh copy per example: hypothesis reuses fixtures
        config = Path(directory) / "config.json"
        shutil.copy(clean_folder / "config.json", config)
        edit_json(config, **{field: value})
        with pytest.raises(InvalidArtefactError, match=rf"config\.json: {field}"):
            RetinaScanConfig.from_pretrained(directory)


def test_missing_config_json_says_so(folder):
    (folder / "config.json").unlink()
    with pytest.raises(OSError, match=r"has no config\.json"):
        load_pipeline(folder)


# --- preprocessor_config.json --------------------------------------------------------------------------------

PROCESSOR_CASES = [
    ("size", {"height": 60000, "width": 60000}),
    ("size", {"height": -5, "width": -5}),
    ("size", {"height": 32, "width": 64}),
    ("size", {"shortest_edge": 32}),
    ("size", "32"),
    ("image_std", [0.0, 0.0, 0.0]),
    ("image_std", [0.2, NAN, 0.2]),
    ("image_mean", [0.5, 0.5]),
    ("image_mean", "0.5"),
    ("resample", 99),
    ("do_normalize", "yes"),
    ("fundus_threshold", NAN),
    ("min_fundus_fraction", 0),
    ("max_image_pixels", -1),
    ("max_decoded_pixels", 0),
    ("min_image_size", 0),
    ("max_download_bytes", 1.5),
    ("download_timeout", 0),
    ("min_focus", -1.0),
    ("max_surround_brightness", INF),
]


@pytest.mark.parametrize(("field", "value"), PROCESSOR_CASES, ids=[f"{f}={v!r}" for f, v in PROCESSOR_CASES])
def test_tampered_processor_config_fails_at_load_naming_file_and_field(folder, field, value):
    edit_json(folder / "preprocessor_config.json", **{field: value})
    for load in (RetinaScanImageProcessor.from_pretrained, AutoImageProcessor.from_pretrained, load_pipeline):
        with pytest.raises(InvalidArtefactError) as info:
            load(folder)
        assert "preprocessor_config.json" in str(info.value)
        assert info.value.field.split(".")[0].split("[")[0] == field


# --- weights ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensor", "poison"),
    [
        ("text_prototypes", NAN),
        ("projection.fc1.weight", INF),
        ("feature_mean", -INF),
        ("clip.visual_projection.weight", NAN),
    ],
)
def test_non_finite_weights_fail_at_load_naming_the_tensor(folder, tensor, poison):
    weights = folder / "model.safetensors"
    with torch.no_grad():
        state = RetinaScanModel.from_pretrained(folder).state_dict()
    poisoned = state[tensor].clone()
    poisoned.view(-1)[0] = poison
    edit_safetensors(weights, {tensor: poisoned}, metadata={"format": "pt"})
    with pytest.raises(InvalidArtefactError, match=rf"model\.safetensors: {tensor}") as info:
        load_pipeline(folder)
    assert info.value.field == tensor


def test_a_zero_feature_std_fails_at_load(folder):
    edit_safetensors(folder / "model.safetensors", {"feature_std": torch.zeros(32)}, metadata={"format": "pt"})
    with pytest.raises(InvalidArtefactError, match="feature_std must be positive"):
        RetinaScanModel.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_weights_name_the_file(folder, damage):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file" * 4 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(OSError, match=r"model\.safetensors is not a readable safetensors file"):
        load_pipeline(folder)


# --- feature bank ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("nan_rows", [(1, slice(None), NAN), (3, slice(None), NAN)], r"embeddings holds 64 non-finite"),
        ("one_inf", [(0, 0, INF)], r"embeddings holds 1 non-finite"),
        ("all_zero", [(slice(None), slice(None), 0.0)], r"embeddings has 10 all-zero row"),
        ("one_zero_row", [(4, slice(None), 0.0)], r"all-zero row.*first: row 4"),
    ],
)
def test_non_finite_or_zero_bank_rows_fail_at_load(folder, name, make, message):
    embeddings = read_tensor(bank_path(folder), "embeddings")
    for row, column, value in make:
        embeddings[row, column] = value
    edit_safetensors(bank_path(folder), {"embeddings": embeddings})
    with pytest.raises(InvalidArtefactError, match=message) as info:
        load_pipeline(folder)
    assert "feature_bank.safetensors" in str(info.value) and info.value.field == "embeddings"


@pytest.mark.parametrize(
    ("tensors", "metadata", "field"),
    [
        ({"grades": torch.tensor([0.5] * 10)}, {}, "grades"),
        ({}, {"num_labels": "many"}, "num_labels"),
        ({}, {"sources": "[not json"}, "sources"),
        ({}, {"image_ids": json.dumps([1, 2])}, "image_ids"),
        ({}, {"ood_scale": "nan"}, "ood_scale"),
        ({}, {"ood_k": "500"}, "ood_k"),
        ({"ood_features": torch.full((10, 32), NAN)}, {}, "ood_features"),
        ({"grades": None}, {}, "grades"),
        ({}, {"format": "something-else"}, "format"),
    ],
    ids=[
        "float-grades",
        "num-labels-text",
        "sources-json",
        "image-ids-type",
        "ood-scale-nan",
        "ood-k-range",
        "ood-features-nan",
        "grades-missing",
        "format",
    ],
)
def test_tampered_bank_fields_fail_at_load_naming_the_field(folder, tensors, metadata, field):
    edit_safetensors(bank_path(folder), tensors, metadata)
    with pytest.raises(InvalidArtefactError) as info:
        FeatureBank.from_pretrained(folder)
    assert "feature_bank.safetensors" in str(info.value) and info.value.field == field


def test_a_bank_over_another_number_of_grades_fails_at_load(folder, tmp_path):
    edit_safetensors(bank_path(folder), {"grades": torch.arange(10) % 3}, {"num_labels": "3"})
    with pytest.raises(FeatureBankMismatchError, match="3 grades but the model has 5"):
        load_pipeline(folder)
    # Evaluation and release staging load the bank themselves: they refuse it the same way, before any work.
    with pytest.raises(FeatureBankMismatchError, match="3 grades but the model has 5"):
        evaluate_model(folder, tmp_path / "no-corpus", tmp_path / "evaluation")
    with pytest.raises(FeatureBankMismatchError, match="3 grades but the model has 5"):
        stage_release(folder, tmp_path / "release", CardFacts(repo_id="org/name"))


def test_a_corrupt_bank_names_the_file(folder):
    bank_path(folder).write_bytes(b"\x00" * 64)
    with pytest.raises(OSError, match=r"feature_bank\.safetensors is not a readable safetensors file"):
        load_pipeline(folder)


# --- the CLI ---------------------------------------------------------------------------------------------------


def test_grade_command_refuses_a_tampered_folder_with_exit_2(folder, fundus_images, tmp_path, capsys):
    image = tmp_path / "fundus.png"
    fundus_images[0].save(image)
    edit_json(folder / "config.json", coral_thresholds=[NAN] * 4)
    assert main(["grade", str(folder), str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "config.json: coral_thresholds[0]" in captured.err


def test_grade_command_prints_strict_json(clean_folder, fundus_images, tmp_path, capsys):
    image = tmp_path / "fundus.png"
    fundus_images[1].save(image)
    assert main(["grade", str(clean_folder), str(image), str(tmp_path / "missing.png")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    parsed = [json.loads(line, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}")) for line in lines]
    assert [entry["gradable"] for entry in parsed] == [True, False]


def test_json_safe_replaces_every_non_finite_float():
    result = {"scores": [NAN, 0.5, INF], "ood_score": -INF, "neighbors": [{"similarity": NAN}], "grade": 2}
    assert json.loads(json.dumps(json_safe(result), allow_nan=False)) == {
        "scores": [None, 0.5, None],
        "ood_score": None,
        "neighbors": [{"similarity": None}],
        "grade": 2,
    }
    assert np.isnan(result["scores"][0])  # the caller's dict is left alone
