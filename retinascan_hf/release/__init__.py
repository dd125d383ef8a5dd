"""The one release path: stage -> verify in a fresh process -> upload in one commit.

`release_model` is what `retinascan release`, training's export (the card) and `push_to_hub` users go
through. Nothing is uploaded unless the staged folder loaded through remote code, offline, from a Hub-cache
layout, and graded a picture exactly as the source folder does in every decision mode.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi

from ..feature_bank import FEATURE_BANK_NAME
from ..onnx_backend import EXPORT_CONFIG_NAME, OnnxExportRecord
from .card import TINY_BACKBONE, CardFacts, read_json, render_model_card, validate_card
from .stage import ONNX_FOLDER, StagedFile, stage_release
from .upload import upload_release
from .verify import ReleaseVerificationError, VerificationReport, check_label, verify_release

# Largest score difference accepted between the release and its source, per storage dtype: float32 storage
# must reproduce the source bit for bit up to summation order; float16 storage rounds every weight.
SCORE_TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


@dataclass
class ReleaseResult:
    """What a release did: the staged files, the verification, and the commit (None for a dry run)."""

    files: list[StagedFile]
    verification: VerificationReport
    commit: CommitInfo | None
    staging_dir: Path | None


def discover_facts(
    model_dir: Path,
    repo_id: str,
    *,
    evaluation_report: str | Path | None = None,
    build_report: str | Path | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str | None = None,
) -> CardFacts:
    """Card facts for a model folder: the training run's `metrics.json` next to it (a run folder holds `model/`
    and `metrics.json`), the corpus build report it names, and any evaluation report given."""
    training = read_json(Path(model_dir).parent / "metrics.json")
    config = (training or {}).get("config", {})
    if build_report is None and config.get("data"):
        build_report = Path(config["data"]) / "build_report.json"
    if base_model is None and config.get("backbone") not in (None, TINY_BACKBONE):
        base_model = config["backbone"]
    facts = CardFacts(
        repo_id=repo_id,
        base_model=base_model,
        datasets=list(datasets or []),
        training_metrics=training,
        build_report=read_json(build_report),
        evaluation_report=read_json(evaluation_report),
    )
    if license:
        facts.license = license
    return facts


def reference_answers(model_dir: Path, image: Path, onnx_variants: Sequence[str] = ()) -> dict[str, Any]:
    """The source folder's answers on `image` in every decision mode it supports (installed classes), with the
    torch model and with each of `onnx_variants` (its ONNX export), keyed by [`check_label`]."""
    from ..loading import load_pipeline
    from ..modeling_retinascan import DECISION_MODES

    modes = [mode for mode in DECISION_MODES if mode != "knn" or (Path(model_dir) / FEATURE_BANK_NAME).is_file()]
    answers = {}
    for variant in [None, *onnx_variants]:
        options = {} if variant is None else {"backend": "onnx", "onnx_variant": variant}
        grader = load_pipeline(model_dir, **options)
        answers.update({check_label(mode, variant): grader(str(image), mode=mode) for mode in modes})
    return answers


def released_onnx_variants(staged: Path) -> list[str]:
    """The ONNX graphs a staged release holds (none without an export)."""
    record = Path(staged) / ONNX_FOLDER / EXPORT_CONFIG_NAME
    return sorted(OnnxExportRecord.from_file(record).variants) if record.is_file() else []


def verification_image(model_dir: Path, directory: Path) -> Path:
    """A synthetic fundus picture at the model's input size, for the load-and-grade check."""
    from ..image_processing_retinascan import RetinaScanImageProcessor
    from ..synthetic import synthetic_fundus_set

    size = RetinaScanImageProcessor.from_pretrained(model_dir).output_size
    path = directory / "verification.png"
    synthetic_fundus_set([2], size=max(size, 64), seed=0)[0].save(path)
    return path


def release_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    dry_run: bool = False,
    storage_dtype: str = "float32",
    keep_text_tower: bool = False,
    revision: str | None = None,
    tag: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    staging_dir: str | Path | None = None,
    facts: CardFacts | None = None,
    api: HfApi | None = None,
) -> ReleaseResult:
    """Stage `model_dir` as a release of `repo_id`, verify it in a fresh process, and (unless `dry_run`) upload
    it in one commit. `staging_dir` keeps the staged folder (it must be new or empty); by default it is temporary.
    """
    model_dir = Path(model_dir)
    facts = facts or discover_facts(model_dir, repo_id)
    with tempfile.TemporaryDirectory(prefix="retinascan-release-") as scratch:
        staged = Path(staging_dir) if staging_dir is not None else Path(scratch) / "release"
        if staged.exists() and any(staged.iterdir()):
            raise FileExistsError(f"Staging folder {staged} is not empty; choose a new or empty folder.")
        staged.mkdir(parents=True, exist_ok=True)
        files = stage_release(model_dir, staged, facts, storage_dtype=storage_dtype, keep_text_tower=keep_text_tower)
        image = verification_image(model_dir, Path(scratch))
        verification = verify_release(
            staged,
            repo_id,
            reference=reference_answers(model_dir, image, released_onnx_variants(staged)),
            image=image,
            tolerance=SCORE_TOLERANCE[storage_dtype],
        )
        commit = None
        if not dry_run:
            commit = upload_release(staged, repo_id, revision=revision, tag=tag, private=private, token=token, api=api)
    return ReleaseResult(files, verification, commit, Path(staging_dir) if staging_dir is not None else None)


__all__ = [
    "CardFacts",
    "ReleaseResult",
    "ReleaseVerificationError",
    "discover_facts",
    "release_model",
    "render_model_card",
    "stage_release",
    "upload_release",
    "validate_card",
    "verify_release",
]
