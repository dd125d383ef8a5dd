"""Pipelines the transformers way, with the package installed: `pipeline("retinascan")` without remote code,
`pipeline("image-classification")` and `evaluate`'s evaluator, `top_k`, and the feature bank never silently lost.

(The same from a process that never imports the package, through remote code: `test_core_hub_loading.py`.)
"""

from __future__ import annotations

import shutil
import textwrap

import datasets
import evaluate
import numpy as np
import pytest
import torch
import transformers
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import ImageClassificationPipeline, pipeline
from transformers.testing_utils import CaptureLogger

import retinascan_hf
from retinascan_hf import (
    FEATURE_BANK_NAME,
    ICDR_LABELS,
    FeatureBankUnavailableError,
    RetinaScanImageProcessor,
    RetinaScanModel,
    RetinaScanPipeline,
)
from retinascan_hf.pipeline_retinascan import logger

RESULT_KEYS = {"grade", "label", "scores", "referable", "mode", "gradable"}


def test_pipeline_task_uses_the_installed_classes_without_trust_remote_code(model_dir, fundus_images, monkeypatch):
    def no_question(prompt):  # transformers asks on a terminal before running remote code
        raise AssertionError(f"pipeline() asked: {prompt}")

    monkeypatch.setattr("builtins.input", no_question)
    grader = pipeline("retinascan", model=str(model_dir))
    assert type(grader) is RetinaScanPipeline and type(grader.model) is RetinaScanModel
    assert type(grader.image_processor) is RetinaScanImageProcessor
    assert grader.feature_bank is not None and grader(fundus_images[3])["grade"] == 3
    # transformers prefers explicitly registered classes to a repo's code even when trusted: the pipeline follows,
    # instead of pairing the repo's pipeline code with the installed model.
    trusted = pipeline("retinascan", model=str(model_dir), trust_remote_code=True)
    assert type(trusted) is RetinaScanPipeline and type(trusted.model) is RetinaScanModel


def test_pipeline_accepts_a_model_object(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    grader = pipeline("retinascan", model=model, image_processor=processor, feature_bank=False)
    assert type(grader) is RetinaScanPipeline
    assert grader(fundus_images[0])["mode"] == "ordinal"


@pytest.fixture(scope="module")
def classifier(model_dir):
    return pipeline("image-classification", model=str(model_dir))


def test_image_classification_pipeline_returns_sorted_labels_agreeing_with_the_model(classifier, fundus_images):
    assert isinstance(classifier, ImageClassificationPipeline) and type(classifier.model) is RetinaScanModel
    results = classifier(fundus_images[:5])
    with torch.no_grad():
        decisions = classifier.model(**classifier.image_processor(fundus_images[:5])).predicted_grade
    for ranked, decision in zip(results, decisions.tolist(), strict=True):
        assert sorted(entry["label"] for entry in ranked) == sorted(ICDR_LABELS)
        scores = [entry["score"] for entry in ranked]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert ranked[0]["label"] == ICDR_LABELS[decision]
    assert len(classifier(fundus_images[0], top_k=2)) == 2


def test_image_classification_pipeline_accepts_tensors(classifier, fundus_images):
    array = np.array(fundus_images[1])
    from_pil = classifier(fundus_images[1])
    from_tensor = classifier(torch.from_numpy(array).permute(2, 0, 1))
    assert [entry["label"] for entry in from_tensor] == [entry["label"] for entry in from_pil]


ACCURACY_SCRIPT = textwrap.dedent(
    """
    import datasets
    import evaluate


    class LocalAccuracy(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(
                description="Fraction of predictions equal to the references.",
                citation="",
                inputs_description="predictions, references: integer labels",
                features=datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
            )

        def _compute(self, predictions, references):
            return {"accuracy": sum(int(p == r) for p, r in zip(predictions, references)) / len(references)}
    """
)


def test_evaluate_image_classification_evaluator_runs_offline(model_dir, classifier, fundus_images, tmp_path):
    """`evaluate.load("accuracy")` needs the Hub; a metric script loaded by path does not."""
    script_dir = tmp_path / "local_accuracy"
    script_dir.mkdir()
    (script_dir / "local_accuracy.py").write_text(ACCURACY_SCRIPT)
    metric = evaluate.load(str(script_dir))
    labels = [0, 1, 2, 3, 4] * 2
    data = datasets.Dataset.from_dict({"image": fundus_images, "label": labels})
    # A model *path*: evaluate 0.4.6 cannot take a pipeline object under transformers 5 (it tests for the removed
    # `transformers.TFPreTrainedModel`); with the package imported the path loads the installed classes.
    result = evaluate.evaluator("image-classification").compute(
        model_or_pipeline=str(model_dir), data=data, metric=metric, label_mapping=classifier.model.config.label2id
    )
    predicted = [ICDR_LABELS.index(ranked[0]["label"]) for ranked in classifier(fundus_images)]
    expected = sum(int(p == r) for p, r in zip(predicted, labels, strict=True)) / len(labels)
    assert result["accuracy"] == pytest.approx(expected)


def test_top_k_adds_sorted_labels_and_keeps_the_existing_keys(model_dir, fundus_images, tmp_path):
    grader = pipeline("retinascan", model=str(model_dir))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    plain = grader([fundus_images[2], str(corrupt)])
    ranked = grader([fundus_images[2], str(corrupt)], top_k=3)
    assert {key: value for key, value in ranked[0].items() if key != "top_k"} == plain[0]
    top = ranked[0]["top_k"]
    assert len(top) == 3 and [entry["score"] for entry in top] == sorted(ranked[0]["scores"], reverse=True)[:3]
    assert all(ranked[0]["scores"][ICDR_LABELS.index(entry["label"])] == entry["score"] for entry in top)
    assert ranked[1]["gradable"] is False and ranked[1]["top_k"] is None
    assert len(grader(fundus_images[0], top_k=99)["top_k"]) == 5
    assert ranked[0].keys() >= RESULT_KEYS


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True, "3"])
def test_bad_top_k_is_refused(model_dir, fundus_images, top_k):
    grader = pipeline("retinascan", model=str(model_dir))
    with pytest.raises(ValueError, match="top_k"):
        grader(fundus_images[0], top_k=top_k)


def without_bank(model_dir, destination):
    shutil.copytree(model_dir, destination)
    (destination / FEATURE_BANK_NAME).unlink()
    return destination


def test_a_folder_without_a_bank_warns_once_naming_it(model_dir, tmp_path, fundus_images):
    folder = without_bank(model_dir, tmp_path / "no_bank")
    with CaptureLogger(logger) as captured:
        grader = pipeline("retinascan", model=str(folder))
        results = grader(fundus_images[:3])
    assert captured.out.count("\n") == 1
    assert str(folder) in captured.out and FEATURE_BANK_NAME in captured.out and "mode='ordinal'" in captured.out
    assert {result["mode"] for result in results} == {"ordinal"}


def hub_cache_repo(model_dir, cache, commit, *, bank_known_missing):
    """An offline Hub cache holding `org/grader` at `commit` without its bank, and whether the Hub said so."""
    repo = cache / "models--org--grader"
    without_bank(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    if bank_known_missing:  # what huggingface_hub records after a 404 for the file
        marker = repo / ".no_exist" / commit / FEATURE_BANK_NAME
        marker.parent.mkdir(parents=True)
        marker.touch()
    return RetinaScanModel.from_pretrained("org/grader", revision=commit, cache_dir=cache)


def test_a_repo_revision_without_a_bank_warns_naming_repo_and_revision(model_dir, tmp_path, tiny_model_and_processor):
    commit = "c" * 40
    model = hub_cache_repo(model_dir, tmp_path / "hub", commit, bank_known_missing=True)
    with CaptureLogger(logger) as captured:
        grader = RetinaScanPipeline(model=model, image_processor=tiny_model_and_processor[1])
    assert grader.feature_bank is None
    assert captured.out.count("\n") == 1 and "org/grader" in captured.out and commit in captured.out


def test_a_bank_that_cannot_be_checked_raises_instead_of_changing_mode(model_dir, tmp_path, tiny_model_and_processor):
    """Offline, with the bank neither cached nor known to be missing: whether there is one is unknown."""
    commit = "d" * 40
    model = hub_cache_repo(model_dir, tmp_path / "hub", commit, bank_known_missing=False)
    with pytest.raises(FeatureBankUnavailableError, match=rf"org/grader \(revision {commit}\)"):
        RetinaScanPipeline(model=model, image_processor=tiny_model_and_processor[1])


@pytest.mark.parametrize(
    "failure",
    [
        LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub: connection refused."),
        ConnectionError("Connection reset by peer"),
        TimeoutError("timed out"),
    ],
    ids=["hub-unreachable", "connection-reset", "timeout"],
)
def test_a_connection_error_while_fetching_the_bank_raises(
    model_dir, tmp_path, tiny_model_and_processor, monkeypatch, failure
):
    commit = "e" * 40
    model = hub_cache_repo(model_dir, tmp_path / "hub", commit, bank_known_missing=False)

    def unreachable(*args, **kwargs):
        raise failure

    monkeypatch.setattr(retinascan_hf.feature_bank, "hf_hub_download", unreachable)
    with pytest.raises(FeatureBankUnavailableError, match="org/grader") as info:
        RetinaScanPipeline(model=model, image_processor=tiny_model_and_processor[1])
    assert info.value.__cause__ is failure and "feature_bank=False" in str(info.value)
    # Choosing to grade without the bank is still possible, explicitly.
    grader = RetinaScanPipeline(model=model, image_processor=tiny_model_and_processor[1], feature_bank=False)
    assert grader.feature_bank is None


def test_transformers_verbosity_governs_the_librarys_messages(tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    grader = RetinaScanPipeline(model=model, image_processor=processor, feature_bank=False)
    previous = transformers.logging.get_verbosity()
    try:
        transformers.logging.set_verbosity_error()
        with CaptureLogger(logger) as quiet:
            grader(fundus_images[0], mode="knn")
        transformers.logging.set_verbosity_warning()
        with CaptureLogger(logger) as loud:
            grader(fundus_images[0], mode="knn")
    finally:
        transformers.logging.set_verbosity(previous)
    assert quiet.out == "" and "mode='knn' needs a feature bank" in loud.out
