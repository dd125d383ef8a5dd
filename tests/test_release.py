"""The release path: card rendering and validation, staging, fresh-process verification, one-commit upload.

Nothing here talks to a Hub: the upload goes through the real `upload_release` code with `HfApi`'s network
methods intercepted, and what it sent is materialised as a Hub-cache snapshot and loaded in a fresh process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import CommitInfo, HfApi, ModelCard

from retinascan_hf import FeatureBank
from retinascan_hf.release import CardFacts, ReleaseVerificationError, release_model, render_model_card
from retinascan_hf.release.card import validate_card
from retinascan_hf.release.stage import stage_release
from retinascan_hf.release.verify import load_in_fresh_process, materialize_snapshot, verify_release

REPO_ID = "retinascan-tests/tiny-release"
BUILD_REPORT = {
    "protocol": "merged",
    "sources": {"eyepacs": {"found": 12, "kept": 10, "excluded": {"missing_file": 2}}},
    "splits": {
        "train": {"eyepacs": [4, 1, 1, 0, 0]},
        "validation": {"eyepacs": [1, 0, 1, 0, 0]},
        "test": {"eyepacs": [1, 1, 0, 0, 0]},
    },
}
TRAINING_METRICS = {
    "calibration": {
        "ordinal_temperature": 1.5,
        "prototype_calibration_temperature": 0.7,
        "coral_thresholds": [0.1, 0.2, 0.3, 0.4],
        "prototype_ece_before": 0.12,
        "prototype_ece_after": 0.05,
        "ordinal_qwk_before": 0.61,
        "ordinal_qwk_after": 0.66,
        "ordinal_nll_before": 1.4,
        "ordinal_nll_after": 1.2,
        "ordinal_ece_before": 0.2,
        "ordinal_ece_after": 0.1,
    },
    "data": {"train": {"images": 6, "per_grade": [4, 1, 1, 0, 0]}},
    "conformal": {"calibration_size": 58, "coverage": 0.9},
    "evaluation": {
        "test": {
            "knn": {
                "qwk": 0.8123,
                "accuracy": 0.75,
                "referable": {"sensitivity": 0.9, "specificity": 0.6},
                "confidence_intervals": {"qwk": [0.7, 0.9], "referable": {"sensitivity": [0.8, 1.0]}},
                "grade_sets": {"coverage": 0.93, "mean_size": 1.8},
            },
            "ordinal": {"qwk": 0.7, "accuracy": 0.5, "referable": {"sensitivity": None, "specificity": 0.5}},
        }
    },
}


def facts(**overrides) -> CardFacts:
    values = {
        "repo_id": REPO_ID,
        "base_model": "openai/clip-vit-base-patch16",
        "training_metrics": TRAINING_METRICS,
        "build_report": BUILD_REPORT,
        **overrides,
    }
    return CardFacts(**values)


def test_card_metadata_and_sections(tiny_model_and_processor) -> None:
    model, _ = tiny_model_and_processor
    card = render_model_card(model.config, facts(files=["config.json", "model.safetensors"]), bank_size=10)
    data = ModelCard(str(card)).data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-classification"
    assert data["license"] == "apache-2.0"
    assert data["base_model"] == "openai/clip-vit-base-patch16"
    assert "diabetic-retinopathy" in data["tags"]
    metrics = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"quadratic_weighted_kappa": 0.8123, "accuracy": 0.75, "sensitivity": 0.9, "specificity": 0.6}
    text = card.text
    assert "not a medical device" in text
    assert "| eyepacs | 6 | 2 | 2 | 2 |" in text  # train/validation/test images and exclusions from the report
    assert "| knn | 0.812 [0.700, 0.900] | 0.750 | 0.900 [0.800, 1.000] | 0.600 |" in text
    assert "| ordinal | 0.700 | 0.500 | - | 0.500 |" in text
    assert "covered the true grade for 93.0% of images with\n1.80 grades" in text
    assert f'model="{REPO_ID}"' in text and "revision=" in text
    assert "[More Information Needed]" not in text
    assert "CORAL thresholds\n[0.100, 0.200, 0.300, 0.400]." in text
    assert "(ECE) 0.120 before,\n0.050 after" in text
    assert "QWK (0.610 before,\n0.660 after)" in text and "ECE\n0.200 before, 0.100 after" in text


def test_card_without_reports_says_so(tiny_model_and_processor) -> None:
    model, _ = tiny_model_and_processor
    card = render_model_card(model.config, CardFacts(repo_id=REPO_ID))
    data = card.data.to_dict()
    assert "model-index" not in data and "base_model" not in data
    assert "No evaluation report was available" in card.text
    assert "build report was not available" in card.text


def test_validate_card_rejects_incomplete_metadata(tiny_model_and_processor) -> None:
    model, _ = tiny_model_and_processor
    card = render_model_card(model.config, facts())
    broken = ModelCard(str(card).replace("license: apache-2.0\n", ""))
    with pytest.raises(ValueError, match="license"):
        validate_card(broken)


def test_stage_holds_a_complete_release(model_dir: Path, tmp_path: Path) -> None:
    files = {staged.name for staged in stage_release(model_dir, tmp_path / "release", facts())}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "feature_bank.safetensors",
        "README.md",
        "configuration_retinascan.py",
        "modeling_retinascan.py",
        "pipeline_retinascan.py",
        "image_processing_retinascan.py",
        "feature_bank.py",
    } <= files
    card = (tmp_path / "release" / "README.md").read_text()
    assert "feature_bank.safetensors" in card and "model.safetensors" in card


def test_stage_refuses_a_bank_of_another_model(model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    for path in model_dir.iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    FeatureBank(__import__("torch").randn(4, 7), [0, 1, 2, 3]).save_pretrained(source)  # 7-d rows, model is 32-d
    with pytest.raises(ValueError, match="7-d"):
        stage_release(source, tmp_path / "release", facts())


def test_float16_storage_halves_weights_and_keeps_float32_compute(model_dir: Path, tmp_path: Path) -> None:
    full = {f.name: f.size for f in stage_release(model_dir, tmp_path / "fp32", facts())}
    half = {f.name: f.size for f in stage_release(model_dir, tmp_path / "fp16", facts(), storage_dtype="float16")}
    assert half["model.safetensors"] < 0.6 * full["model.safetensors"]
    assert json.loads((tmp_path / "fp16" / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("storage_dtype", ["float32", "float16"])
def test_dry_run_verifies_in_a_fresh_process(model_dir: Path, tmp_path: Path, storage_dtype: str) -> None:
    result = release_model(
        model_dir, REPO_ID, dry_run=True, storage_dtype=storage_dtype, staging_dir=tmp_path / "s", facts=facts()
    )
    assert result.commit is None
    assert result.verification.ok and set(result.verification.modes) == {"knn", "ordinal", "prototype"}
    for mode, answer in result.verification.released.items():
        assert answer["grade"] == result.verification.reference[mode]["grade"]


def test_verification_catches_a_release_that_grades_differently(model_dir: Path, tmp_path: Path) -> None:
    staged = tmp_path / "release"
    stage_release(model_dir, staged, facts())
    processor = json.loads((staged / "preprocessor_config.json").read_text())
    processor["image_mean"] = [0.9, 0.1, 0.1]  # a processor that drifted from the one the model was trained with
    (staged / "preprocessor_config.json").write_text(json.dumps(processor))
    image = tmp_path / "image.png"
    __import__("retinascan_hf.synthetic", fromlist=["x"]).synthetic_fundus_set([3], size=64, seed=5)[0].save(image)
    from retinascan_hf.release import reference_answers

    with pytest.raises(ReleaseVerificationError, match="differ"):
        verify_release(staged, REPO_ID, reference=reference_answers(model_dir, image), image=image, tolerance=1e-4)


class RecordingApi(HfApi):
    """The real HfApi with its network calls replaced by a record of what would have been sent."""

    def __init__(self) -> None:
        super().__init__(token="hf_test_token")
        self.calls: list[tuple[str, dict]] = []
        self.sent: dict[str, bytes] = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def create_tag(self, repo_id, **kwargs):
        self.calls.append(("create_tag", {"repo_id": repo_id, **kwargs}))

    def create_commit(self, repo_id, operations, **kwargs):
        operations = list(operations)
        self.calls.append(("create_commit", {"repo_id": repo_id, **kwargs}))
        for operation in operations:
            self.sent[operation.path_in_repo] = Path(operation.path_or_fileobj).read_bytes()
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'1' * 40}",
            commit_message=kwargs["commit_message"],
            commit_description=kwargs.get("commit_description", ""),
            oid="1" * 40,
        )


def test_upload_sends_one_commit_that_loads_from_the_hub_cache(model_dir: Path, tmp_path: Path) -> None:
    api = RecordingApi()
    result = release_model(
        model_dir,
        REPO_ID,
        revision="v1-branch",
        tag="v1.0",
        private=True,
        facts=facts(),
        api=api,
        staging_dir=tmp_path / "s",
    )
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "create_branch", "create_commit", "create_tag"]
    create_repo, _, commit, tag = (kwargs for _, kwargs in api.calls)
    assert create_repo["exist_ok"] is True and create_repo["private"] is True
    assert commit["revision"] == "v1-branch"
    assert commit["commit_message"] == (
        "Release tiny-release: weights, feature bank, processor, remote code, model card"
    )
    assert tag["tag"] == "v1.0" and tag["revision"] == "1" * 40
    staged = {path.relative_to(tmp_path / "s").as_posix() for path in (tmp_path / "s").rglob("*") if path.is_file()}
    assert set(api.sent) == staged
    assert result.commit is not None and result.commit.oid == "1" * 40

    cache = tmp_path / "home" / "hub"
    materialize_snapshot(api.sent, cache, REPO_ID)
    image = tmp_path / "image.png"
    __import__("retinascan_hf.synthetic", fromlist=["x"]).synthetic_fundus_set([2], size=64, seed=3)[0].save(image)
    answer = load_in_fresh_process(cache, REPO_ID, image, ["knn", "ordinal"])
    assert not answer["imported_retinascan_hf"]
    assert answer["results"]["knn"]["mode"] == "knn" and answer["results"]["ordinal"]["gradable"] is True


def test_cli_dry_run_lists_files(model_dir: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "retinascan_hf.cli",
            "release",
            "--model",
            str(model_dir),
            "--repo-id",
            REPO_ID,
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "model.safetensors" in completed.stdout and "MiB" in completed.stdout
    assert "Dry run: nothing uploaded." in completed.stdout


def test_staging_leaves_the_source_folder_untouched(model_dir: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    stage_release(model_dir, tmp_path / "release", facts(), storage_dtype="float16")
    assert before == {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}


def test_a_release_without_the_text_tower_loads_cleanly_and_grades_the_same(model_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open

    from retinascan_hf import RetinaScanModel

    stage_release(model_dir, tmp_path / "lean", facts())
    stage_release(model_dir, tmp_path / "full", facts(), keep_text_tower=True)
    with safe_open(str(tmp_path / "lean" / "model.safetensors"), "pt") as handle:
        lean_keys = list(handle.keys())
    assert lean_keys and not any(key.startswith(("clip.text_model.", "clip.text_projection.")) for key in lean_keys)
    assert (tmp_path / "lean" / "model.safetensors").stat().st_size < (
        tmp_path / "full" / "model.safetensors"
    ).stat().st_size
    lean, info = RetinaScanModel.from_pretrained(tmp_path / "lean", output_loading_info=True)
    assert lean.config.text_tower is False and not info["missing_keys"] and not info["unexpected_keys"]
    full = RetinaScanModel.from_pretrained(model_dir).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lean.eval()(pixel_values=pixels).probs, full(pixel_values=pixels).probs)
    with pytest.raises(ValueError, match="no CLIP text tower"):
        lean.compute_text_prototypes(tokenizer=None)


@pytest.fixture(scope="module")
def exported_model_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the model folder with an fp32 + int8 ONNX export in `onnx/`."""
    from retinascan_hf.onnx_export import export_onnx

    directory = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(model_dir, directory)
    export_onnx(directory, int8=True)
    return directory


@pytest.mark.slow  # a fresh process loads the release, twice over ONNX Runtime
def test_a_release_ships_the_onnx_export_loadable_and_verified_on_it(exported_model_dir: Path, tmp_path: Path) -> None:
    """Before: the export was copied as it was, its record naming the sha256 of the source's weights; staging
    re-writes the weights (no text tower), so `backend="onnx"` on the released repo refused it as stale, and the
    verification, which ran the torch backend only, passed."""
    from retinascan_hf.onnx_backend import RetinaScanOnnxModel

    staged = tmp_path / "release"
    result = release_model(exported_model_dir, REPO_ID, dry_run=True, staging_dir=staged, facts=facts())
    assert result.verification.ok
    onnx_checks = {"onnx-fp32:knn", "onnx-int8:knn", "onnx-int8:ordinal", "onnx-int8:prototype"}
    assert onnx_checks <= set(result.verification.modes)
    for label in onnx_checks:
        assert result.verification.released[label]["grade"] == result.verification.reference[label]["grade"]
    assert sorted(path.name for path in (staged / "onnx").iterdir()) == [
        "export_config.json",
        "model.onnx",
        "model_int8.onnx",
    ]  # the graphs and their record, not the source folder's ownership manifest
    assert RetinaScanOnnxModel.from_pretrained(staged, variant="int8").variant == "int8"


def test_a_stale_onnx_export_is_not_released(exported_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from retinascan_hf import RetinaScanModel
    from retinascan_hf.onnx_backend import StaleOnnxExportError

    source = tmp_path / "model"
    shutil.copytree(exported_model_dir, source)
    model = RetinaScanModel.from_pretrained(source)
    with torch.no_grad():
        model.projection.fc1.weight.add_(0.5)  # retrained after the export
    model.save_pretrained(source)
    with pytest.raises(StaleOnnxExportError, match="Re-export"):
        stage_release(source, tmp_path / "release", facts())


def test_model_push_to_hub_warns_what_the_repo_will_lack(tiny_model_and_processor, monkeypatch) -> None:
    from transformers import PreTrainedModel
    from transformers.testing_utils import CaptureLogger

    import retinascan_hf.modeling_retinascan as modeling

    sent = []
    monkeypatch.setattr(PreTrainedModel, "push_to_hub", lambda self, repo_id, **kwargs: sent.append(repo_id) or "url")
    model, _ = tiny_model_and_processor
    with CaptureLogger(modeling.logger) as captured:
        assert model.push_to_hub("org/name") == "url"
    assert sent == ["org/name"]
    assert "feature_bank.safetensors" in captured.out and "retinascan release" in captured.out


@pytest.mark.real_data
def test_float16_storage_grades_real_photos_like_float32(model_dir: Path, real_data_dir: Path, tmp_path: Path) -> None:
    from retinascan_hf.loading import load_pipeline

    stage_release(model_dir, tmp_path / "fp16", facts(), storage_dtype="float16")
    photos = [str(path) for path in sorted((real_data_dir / "eyepacs-256" / "train").glob("*.jpeg"))[:60]]
    source, release = load_pipeline(model_dir), load_pipeline(tmp_path / "fp16")
    for mode in ("knn", "ordinal", "prototype"):
        expected = source(photos, mode=mode, batch_size=16)
        got = release(photos, mode=mode, batch_size=16)
        assert [a["gradable"] for a in got] == [a["gradable"] for a in expected]
        for new, old in zip(got, expected, strict=True):
            if new["grade"] != old["grade"]:  # only where float32 itself was a tie, decided by rounding
                assert abs(old["scores"][new["grade"]] - old["scores"][old["grade"]]) < 1e-3, (mode, new, old)
            assert max(abs(a - b) for a, b in zip(new["scores"], old["scores"], strict=True)) < 1e-3
