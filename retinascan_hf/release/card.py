"""The model card: `model_card/template.md` rendered with `huggingface_hub.ModelCard.from_template`.

A released repository is what other people use, so its card is generated from facts, never typed: the model
config (backbone, heads, calibration, conformal settings), the training run's `metrics.json`, the corpus
`build_report.json` (images per source and split) and, when one exists, an evaluation report (QWK, accuracy and
referable-DR sensitivity/specificity with confidence intervals, also written into `model-index`). The metadata is
validated offline with huggingface_hub's own parser before anything is uploaded.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from ..configuration_retinascan import RetinaScanConfig
from ..model_card import template_text

DEFAULT_LICENSE = "apache-2.0"
PIPELINE_TAG = "image-classification"  # the Hub's task for "image in, one of N labels out"
DEFAULT_TAGS: tuple[str, ...] = (
    "retinascan",
    "diabetic-retinopathy",
    "fundus",
    "medical-imaging",
    "ordinal-regression",
    "clip",
    "custom_code",
)
CARD_NAME = "README.md"
TINY_BACKBONE = "tiny"  # training's offline random backbone: no pretrained checkpoint to name as base_model


@dataclass
class CardFacts:
    """What the card says beyond the config; every field is optional and the card says when one is missing.

    Attributes:
        repo_id: the Hub repository the card describes (used in the snippets and model-index).
        base_model: the pretrained CLIP checkpoint the backbone came from (a Hub id), if any.
        datasets: Hub dataset ids of the training data, if published.
        license: SPDX-style license id of the weights.
        training_metrics: the training run's `metrics.json` (calibration, data sizes, evaluation).
        build_report: the corpus `build_report.json` (images per source and split, exclusions).
        evaluation_report: an evaluation report (`retinascan evaluate`), preferred over training's evaluation.
        files: the file names of the release, listed in the card.
    """

    repo_id: str
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    license: str = DEFAULT_LICENSE
    training_metrics: dict[str, Any] | None = None
    build_report: dict[str, Any] | None = None
    evaluation_report: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)


def read_json(path: str | Path | None) -> dict[str, Any] | None:
    """A JSON file as a dict, or None when no path is given or the file does not exist."""
    if path is None or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def training_sources(build_report: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Rows `source, train, validation, test, excluded` from a corpus build report."""
    if not build_report:
        return []
    rows = []
    for source, counts in build_report.get("sources", {}).items():
        per_split = {split: sum(build_report["splits"].get(split, {}).get(source, [])) for split in SPLIT_NAMES}
        rows.append({"source": source, **per_split, "excluded": sum(counts.get("excluded", {}).values())})
    return rows


SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    """`tree["a"]["b"]` for `path="a.b"`; None where any step is missing."""
    for key in path.split("."):
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _format_estimate(value: float | None, interval: Sequence[float] | None) -> str:
    """`0.812 [0.771, 0.850]`, `0.812` without an interval, `-` when undefined."""
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if interval and None not in interval:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


# The figures of the card's evaluation table and model-index: (column, path in a mode's metrics, model-index type).
CARD_METRICS: tuple[tuple[str, str, str], ...] = (
    ("qwk", "qwk", "quadratic_weighted_kappa"),
    ("accuracy", "accuracy", "accuracy"),
    ("sensitivity", "referable.sensitivity", "sensitivity"),
    ("specificity", "referable.specificity", "specificity"),
)


def evaluation_modes(facts: CardFacts) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """`(split name, {mode: metrics})` from the evaluation report (`retinascan evaluate`), else from the test
    evaluation of the training run; both hold `retinascan_hf.metrics` summaries per mode."""
    report = facts.evaluation_report
    if report and "modes" in report:
        return report.get("split"), report["modes"]
    evaluation = (facts.training_metrics or {}).get("evaluation", {})
    if "test" in evaluation:
        return "test", evaluation["test"]
    return None, {}


def evaluation_rows(modes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per decision mode: QWK, accuracy, referable sensitivity and specificity, with 95% intervals."""
    rows = []
    for mode, metrics in modes.items():
        intervals = metrics.get("confidence_intervals") or {}
        row = {"mode": mode}
        for column, path, _ in CARD_METRICS:
            row[column] = _format_estimate(_lookup(metrics, path), _lookup(intervals, path))
        rows.append(row)
    return rows


def default_mode(modes: Mapping[str, Any]) -> str | None:
    """The mode a user gets by default (kNN when evaluated), else the first evaluated one."""
    return "knn" if "knn" in modes else next(iter(modes), None)


def eval_results(facts: CardFacts, model_name: str) -> list[EvalResult]:
    """`model-index` entries for the default decision mode."""
    split, modes = evaluation_modes(facts)
    mode = default_mode(modes)
    if mode is None:
        return []
    dataset_name = ", ".join(row["source"] for row in training_sources(facts.build_report)) or "held-out test split"
    results = []
    for column, path, metric_type in CARD_METRICS:
        value = _lookup(modes[mode], path)
        if value is None:
            continue
        results.append(
            EvalResult(
                task_type=PIPELINE_TAG,
                task_name="Diabetic retinopathy grading (ICDR 0-4)",
                dataset_type="retinascan-corpus",
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=f"{column} ({mode})",
                metric_value=round(float(value), 4),
            )
        )
    return results


def conformal_summary(facts: CardFacts) -> dict[str, Any] | None:
    """Target coverage (training's calibration) and, when evaluated, the default mode's empirical coverage."""
    calibration = (facts.training_metrics or {}).get("conformal")
    if not calibration:
        return None
    _, modes = evaluation_modes(facts)
    mode = default_mode(modes)
    sets = (modes.get(mode) or {}).get("grade_sets") if mode else None
    summary = {"coverage": calibration["coverage"], "calibration_size": calibration.get("calibration_size")}
    if sets:
        summary.update(mode=mode, empirical_coverage=sets["coverage"], mean_set_size=sets["mean_size"])
    return summary


def card_data(config: RetinaScanConfig, facts: CardFacts, model_name: str) -> ModelCardData:
    """The YAML metadata block: library, task, license, base model, datasets, tags and model-index."""
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license=facts.license,
        base_model=facts.base_model,
        datasets=facts.datasets or None,
        tags=list(DEFAULT_TAGS),
        eval_results=eval_results(facts, model_name) or None,
    )


def _backbone_description(config: RetinaScanConfig, base_model: str | None) -> str:
    vision = config.backbone_config.vision_config
    architecture = (
        f"CLIP ViT ({vision.num_hidden_layers} layers, width {vision.hidden_size}, patch {vision.patch_size}, "
        f"{vision.image_size} px)"
    )
    return f"{architecture} from `{base_model}`" if base_model else f"{architecture}, randomly initialised"


def render_model_card(config: RetinaScanConfig, facts: CardFacts, *, bank_size: int | None = None) -> ModelCard:
    """The card for a model with `config`, filled from `facts`, validated (see [`validate_card`])."""
    repo_name = facts.repo_id.split("/")[-1]
    model_name = repo_name
    training = facts.training_metrics or {}
    split, modes = evaluation_modes(facts)
    calibration = training.get("calibration")
    conformal = conformal_summary(facts)
    card = ModelCard.from_template(
        card_data(config, facts, model_name),
        template_str=template_text(),
        model_name=model_name,
        repo_id=facts.repo_id,
        revision_hint="<commit sha>",
        summary=(
            "Grades diabetic retinopathy severity (ICDR grades 0-4: "
            + ", ".join(f"{grade} {label}" for grade, label in config.id2label.items())
            + ') from colour fundus photographs, with `pipeline("retinascan")`.'
        ),
        labels=config.id2label,
        referable_grade=config.referable_grade,
        backbone_description=_backbone_description(config, facts.base_model),
        freeze_backbone=config.freeze_backbone,
        embedding_dim=config.embedding_dim,
        num_labels=config.num_labels,
        knn_k=config.knn_k,
        bank_size=bank_size,
        files=facts.files,
        text_tower_dropped=not getattr(config, "keep_text_tower", True),
        training_sources=training_sources(facts.build_report),
        protocol=(facts.build_report or {}).get("protocol"),
        split_sizes={name: entry["per_grade"] for name, entry in training.get("data", {}).items()},
        calibration=calibration,
        conformal=conformal,
        evaluation_split=split,
        evaluation_rows=evaluation_rows(modes),
        evaluation_has_ci=any(metrics.get("confidence_intervals") for metrics in modes.values()),
        year=datetime.date.today().year,
    )
    validate_card(card)
    return card


def write_training_card(
    folder: Path, config: RetinaScanConfig, metrics: dict[str, Any], *, data_dir: str | None, backbone: str
) -> Path:
    """The card a training run writes into its model folder (`folder`, holding the other files already).

    The repo id is not known yet: the card names the folder (`ORG/<folder>` in its snippets) and
    `retinascan release --repo-id` renders it again for the real repository.
    """
    facts = CardFacts(
        repo_id=f"ORG/{Path(metrics.get('model_dir', folder)).name}",
        base_model=None if backbone == TINY_BACKBONE else backbone,
        training_metrics=metrics,
        build_report=read_json(Path(data_dir) / "build_report.json") if data_dir else None,
        files=card_files([path.name for path in Path(folder).iterdir() if path.is_file()]),
    )
    target = Path(folder) / CARD_NAME
    render_model_card(config, facts).save(target)
    return target


def validate_card(card: ModelCard) -> None:
    """Check the card's metadata with huggingface_hub's own parsers, offline.

    (`RepoCard.validate` asks the Hub's API; this re-parses the rendered text as the Hub library does: the YAML
    block must load, `model-index` must round-trip into `EvalResult`s, and the required keys must be present.)
    """
    parsed = ModelCard(str(card), ignore_metadata_errors=False)
    data = parsed.data.to_dict()
    missing = [key for key in ("library_name", "pipeline_tag", "license", "tags") if not data.get(key)]
    if missing:
        raise ValueError(f"Model card metadata lacks {missing}.")
    if "model-index" in data:
        model_name, results = model_index_to_eval_results(data["model-index"])
        if eval_results_to_model_index(model_name, results) != data["model-index"]:
            raise ValueError("Model card model-index does not round-trip through huggingface_hub's EvalResult.")


def card_files(names: Sequence[str]) -> list[str]:
    """File names listed in the card: sorted, the card itself excluded."""
    return sorted(name for name in names if name != CARD_NAME)


__all__ = [
    "CARD_NAME",
    "DEFAULT_LICENSE",
    "CardFacts",
    "card_data",
    "eval_results",
    "read_json",
    "render_model_card",
    "training_sources",
    "validate_card",
    "write_training_card",
]
