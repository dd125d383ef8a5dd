"""`evaluate_model`: a saved model and a corpus split in; report.json, report.md and three plots out.

Backbone features are computed once (or read from the training feature cache: same folder layout, same
backbone fingerprint, so evaluating right after training runs no backbone forward at all), and every mode of
[`modes`] grades from them. Metrics come from `retinascan_hf.metrics` (the `evaluate` metric's code) with
bootstrap intervals resampling patients. Files are written one by one, each atomically, into an output folder
that may hold other things: nothing there is deleted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from transformers.utils import logging

from ..atomic_io import write_json_atomically
from ..corpus import REPORT_FILE, SPLITS
from ..feature_bank import FeatureBank
from ..image_processing_retinascan import RetinaScanImageProcessor
from ..metrics import reliability_bins
from ..metrics.grading import exceedance
from ..metrics.plots import RocInput, save_confusion_matrices, save_reliability_diagram, save_roc_curves
from ..metrics.summary import DEFAULT_RESAMPLES
from ..modeling_retinascan import GradeDecision, RetinaScanModel
from ..training.augment import FundusAugmentation
from ..training.config import default_cache_dir
from ..training.data import FundusViews
from ..training.evaluation import decision_metrics
from ..training.feature_cache import FeatureCache, augmentation_key, backbone_fingerprint, cached_features
from .modes import ENSEMBLE_MEMBERS, MODE_DESCRIPTIONS, all_decisions, uncalibrated_prototype_scores
from .report import render_report

logger = logging.get_logger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability_diagram.png"
ROC_PNG = "roc_referable.png"
HELD_OUT_PROTOCOLS = ("loso", "gdrbench")  # protocols whose `<name>:<source>` form tests on one unseen source


@dataclass
class EvaluationSettings:
    """How to evaluate.

    Args:
        split: the corpus split to grade (`test` by default).
        cache_dir: root of the feature cache (training's default: shared with training runs).
        batch_size: images per backbone forward.
        n_bootstrap, seed: bootstrap resamples for the 95% intervals, and their seed.
        coverage: target coverage of the conformal grade sets (default: the model config's).
        cpu: compute on the CPU even where a GPU is present.
        progress: show a progress bar while features are computed.
        revision: model revision, for Hub repos.
    """

    split: str = "test"
    cache_dir: str | None = None
    batch_size: int = 32
    n_bootstrap: int = DEFAULT_RESAMPLES
    seed: int = 0
    coverage: float | None = None
    cpu: bool = False
    progress: bool = True
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be 0 (no intervals) or more, got {self.n_bootstrap}.")
        if self.coverage is not None and not 0 < self.coverage < 1:
            raise ValueError(f"coverage must lie strictly between 0 and 1, got {self.coverage}.")


@dataclass
class EvaluationResult:
    """The report (also in `report.json`) and the files written."""

    report: dict[str, Any]
    files: dict[str, str | None]


def load_split(data: str | os.PathLike, split: str) -> datasets.Dataset:
    """One split of a corpus `DatasetDict` folder, checked for the columns evaluation reads."""
    corpus = datasets.load_from_disk(str(data))
    if not isinstance(corpus, datasets.DatasetDict) or split not in corpus:
        available = list(corpus) if isinstance(corpus, datasets.DatasetDict) else "a single Dataset"
        raise ValueError(f"{data} has no split {split!r} (it holds {available}).")
    dataset = corpus[split]
    missing = [column for column in ("image", "grade", "image_id", "source") if column not in dataset.column_names]
    if missing:
        raise ValueError(f"Split {split!r} of {data} lacks column(s) {missing}.")
    if len(dataset) == 0:
        raise ValueError(f"Split {split!r} of {data} is empty: nothing to evaluate.")
    return dataset


def held_out_source(data: str | os.PathLike) -> str | None:
    """The source a leave-one-source-out corpus tests on (from its build report), else `None`."""
    path = Path(data) / REPORT_FILE
    if not path.is_file():
        return None
    protocol = str(json.loads(path.read_text(encoding="utf-8")).get("protocol", ""))
    name, _, source = protocol.partition(":")
    return source if name in HELD_OUT_PROTOCOLS and source else None


def split_features(
    model: RetinaScanModel,
    processor: RetinaScanImageProcessor,
    dataset: datasets.Dataset,
    split: str,
    settings: EvaluationSettings,
    accelerator: Accelerator,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Un-augmented backbone features `[N, D]` of `dataset`, through the training feature cache."""
    augmentation = FundusAugmentation()  # view 0 is never augmented: only the cache folder layout needs one
    cache = FeatureCache(
        settings.cache_dir or default_cache_dir(),
        backbone_fingerprint(model, processor),
        augmentation_key(augmentation, settings.seed),
    )
    views = FundusViews(dataset, processor, augmentation, settings.seed)
    features, stats = cached_features(
        model,
        views,
        split,
        1,
        cache=cache,
        accelerator=accelerator,
        batch_size=settings.batch_size,
        progress=settings.progress,
    )
    return features.view(0), {"directory": str(cache.directory), "fingerprint": cache.fingerprint, **vars(stats)}


def _point_metrics(decision: GradeDecision, references: np.ndarray, model: RetinaScanModel, rows: np.ndarray) -> dict:
    subset = GradeDecision(
        decision.scores[rows],
        decision.grades[rows],
        grade_sets=None if decision.grade_sets is None else decision.grade_sets[rows],
    )
    return decision_metrics(subset, references[rows], model.config)


def per_source(
    decisions: dict[str, GradeDecision], references: np.ndarray, sources: list[str], model: RetinaScanModel
) -> dict[str, dict[str, Any]]:
    """Point estimates of every mode on each source's images."""
    sources_array = np.asarray(sources)
    return {
        source: {
            mode: _point_metrics(decision, references, model, np.flatnonzero(sources_array == source))
            for mode, decision in decisions.items()
        }
        for source in sorted(set(sources))
    }


def _plots(
    output_dir: Path,
    decisions: dict[str, GradeDecision],
    outputs: Any,
    modes: dict[str, dict[str, Any]],
    references: np.ndarray,
    model: RetinaScanModel,
) -> dict[str, str | None]:
    config = model.config
    matrices = {
        f"{mode} (QWK {'n/a' if metrics['qwk'] is None else format(metrics['qwk'], '.3f')})": np.asarray(
            metrics["confusion_matrix"]
        )
        for mode, metrics in modes.items()
    }
    reliability = {
        "ordinal head": {
            "before calibration": reliability_bins(decisions["ordinal_uncalibrated"].scores.numpy(), references),
            "after calibration": reliability_bins(decisions["ordinal"].scores.numpy(), references),
        },
        "prototype head": {
            "before calibration": reliability_bins(uncalibrated_prototype_scores(outputs).numpy(), references),
            "after calibration": reliability_bins(decisions["prototype"].scores.numpy(), references),
        },
    }
    cut = config.referable_grade
    curves = {
        mode: RocInput(
            positive=references >= cut,
            scores=exceedance(decisions[mode].scores.double().numpy(), cut),
            auroc=metrics["referable"]["auroc"],
            sensitivity=metrics["referable"]["sensitivity"],
            specificity=metrics["referable"]["specificity"],
        )
        for mode, metrics in modes.items()
    }
    return {
        "confusion_matrix": save_confusion_matrices(matrices, output_dir / CONFUSION_PNG),
        "reliability_diagram": save_reliability_diagram(reliability, output_dir / RELIABILITY_PNG),
        "roc_referable": save_roc_curves(curves, output_dir / ROC_PNG, f"Referable DR (grade >= {cut})"),
    }


def evaluate_model(
    model_name_or_path: str | os.PathLike,
    data: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: EvaluationSettings | None = None,
) -> EvaluationResult:
    """Grade `settings.split` of the corpus at `data` in every mode and write the report into `output_dir`."""
    settings = settings or EvaluationSettings()
    source = str(model_name_or_path)
    model = RetinaScanModel.from_pretrained(source, revision=settings.revision)
    processor = RetinaScanImageProcessor.from_pretrained(source, revision=settings.revision)
    bank = FeatureBank.from_pretrained(source, revision=settings.revision, missing_ok=True)
    if bank is not None:
        bank.check_compatible(
            model.config.embedding_dim,
            model.config.embedding_hash(),
            dtype=model.dtype,
            num_labels=model.config.num_labels,
        )
    accelerator = Accelerator(cpu=settings.cpu)
    model.to(accelerator.device).eval()
    dataset = load_split(data, settings.split)
    features, cache = split_features(model, processor, dataset, settings.split, settings, accelerator)
    model.cpu()
    references = np.asarray(list(dataset["grade"]), dtype=np.int64)
    patients = list(dataset["patient_id"]) if "patient_id" in dataset.column_names else None
    decisions, outputs = all_decisions(model, features, bank, coverage=settings.coverage)
    modes = {
        mode: decision_metrics(
            decision,
            references,
            model.config,
            patient_ids=patients,
            n_bootstrap=settings.n_bootstrap,
            seed=settings.seed,
        )
        for mode, decision in decisions.items()
    }
    sources = list(dataset["source"])
    report: dict[str, Any] = {
        "model": source,
        "revision": settings.revision,
        "data": str(data),
        "split": settings.split,
        "images": len(dataset),
        "images_per_grade": np.bincount(references, minlength=model.config.num_labels).tolist(),
        "feature_cache": cache,
        "referable_grade": model.config.referable_grade,
        "coverage": model.config.conformal_coverage if settings.coverage is None else settings.coverage,
        "descriptions": {mode: MODE_DESCRIPTIONS[mode] for mode in decisions},
        "ensemble_members": [mode for mode in ENSEMBLE_MEMBERS if mode in decisions],
        "modes": modes,
        "per_source": per_source(decisions, references, sources, model),
        "leave_one_source_out": None,
    }
    held_out = held_out_source(data)
    if held_out is not None and settings.split == "test":
        report["leave_one_source_out"] = leave_one_source_out(
            model, processor, bank, data, held_out, modes, settings, accelerator
        )
    files: dict[str, str | None] = {}
    if accelerator.is_main_process:  # every process computed the same numbers; one writes them
        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)
        files = _plots(output, decisions, outputs, modes, references, model)
        report["files"] = {name: None if path is None else Path(path).name for name, path in files.items()}
        markdown = output / REPORT_MD
        temporary = markdown.with_name(f".{REPORT_MD}.{os.getpid()}.tmp")
        temporary.write_text(render_report(report), encoding="utf-8")
        os.replace(temporary, markdown)
        files["report_md"] = str(markdown)
        files["report_json"] = str(write_json_atomically(output / REPORT_JSON, report))
    accelerator.wait_for_everyone()
    return EvaluationResult(report, files)


def leave_one_source_out(
    model: RetinaScanModel,
    processor: RetinaScanImageProcessor,
    bank: FeatureBank | None,
    data: str | os.PathLike,
    held_out: str,
    test_modes: dict[str, dict[str, Any]],
    settings: EvaluationSettings,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """In-domain (validation: the training sources) against held-out (test: `held_out`) for every mode: the
    generalisation gap a leave-one-source-out corpus exists to measure."""
    validation_split = SPLITS[1]
    try:
        dataset = load_split(data, validation_split)
    except ValueError as error:  # e.g. built with --val-ratio 0: the table cannot exist, the report says why
        logger.warning(f"No leave-one-source-out table: {error}")
        return {"held_out_source": held_out, "skipped": str(error)}
    model.to(accelerator.device)
    features, _ = split_features(model, processor, dataset, validation_split, settings, accelerator)
    model.cpu()
    references = np.asarray(list(dataset["grade"]), dtype=np.int64)
    decisions, _ = all_decisions(model, features, bank, coverage=settings.coverage)
    rows = {}
    for mode, decision in decisions.items():
        in_domain = decision_metrics(decision, references, model.config)
        rows[mode] = {
            statistic: {"in_domain": in_domain[statistic], "held_out": test_modes[mode][statistic]}
            for statistic in ("qwk", "accuracy")
        }
        rows[mode]["referable_auroc"] = {
            "in_domain": in_domain["referable"]["auroc"],
            "held_out": test_modes[mode]["referable"]["auroc"],
        }
    return {
        "held_out_source": held_out,
        "in_domain_sources": sorted(set(dataset["source"])),
        "in_domain_images": len(dataset),
        "modes": rows,
    }


__all__ = ["EvaluationResult", "EvaluationSettings", "evaluate_model", "held_out_source", "load_split"]
