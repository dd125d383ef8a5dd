"""Do int8 ONNX grades agree with fp32 ones on real photographs, at the real ViT-B/16 size?

Protocol: the EyePACS-256 patients are split in two halves (seeded); a random-weight ViT-B/16 RetinaScan model
(feature standardisation fitted on 64 bank images, as training does) is exported to fp32 and int8 ONNX
(dynamic, the default, and static with calibration images from the bank half). The bank half's embeddings form
the feature bank; the other half is graded by every variant in every decision mode, and the int8 decisions are
compared with the fp32 ones: agreement, largest score difference, embedding cosine. kNN is reported twice: with
the fp32 bank a trained folder ships (the deployment case) and with the bank rebuilt from int8 embeddings.

With `train_heads`, the comparison is repeated for heads trained on the bank half's fp32 backbone features (the
library's trainer, reference configuration): the heads run in fp32 downstream of `image_features` in every
graph, so each variant's decisions follow from its own backbone features. It tells whether disagreement comes
from untrained heads (near-tie decisions) or from the backbone's quantisation error itself.

Weights do not change run time, and random weights make a harsh test: embeddings of a random tower differ
little between photographs, so small quantisation errors move neighbours and grades more than with a trained
model.
"""

from __future__ import annotations

import csv
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from benchmarks.machine import machine_info
from retinascan_hf.feature_bank import FeatureBank
from retinascan_hf.image_processing_retinascan import RetinaScanImageProcessor
from retinascan_hf.modeling_retinascan import DECISION_MODES, RetinaScanModel, RetinaScanOutput, decide
from retinascan_hf.onnx_backend import EXPORT_CONFIG_NAME, ONNX_SUBFOLDER, RetinaScanOnnxModel
from retinascan_hf.onnx_export import export_onnx
from retinascan_hf.tiny_clip import random_retinascan, vit_b16_clip_config
from retinascan_hf.training.config import TrainingConfig
from retinascan_hf.training.splits import CachedSplit
from retinascan_hf.training.trainer import RetinaScanTrainer, make_accelerator

VARIANTS: dict[str, tuple[str, str]] = {  # name -> (ONNX variant, export subfolder)
    "fp32": ("fp32", ONNX_SUBFOLDER),
    "int8_dynamic": ("int8", ONNX_SUBFOLDER),
    "int8_static": ("int8", "onnx-static"),
}
STATISTICS_IMAGES = 64
HEAD_VALIDATION_EVERY = 7  # every 7th bank patient validates the trained heads (model selection), the rest train


def read_labels(data_dir: Path, limit_patients: int | None = None) -> list[tuple[str, int]]:
    """`(image path, grade)` of an EyePACS layout (`trainLabels.csv` + `train/<image>.jpeg`)."""
    with open(data_dir / "trainLabels.csv", newline="") as handle:
        rows = [(str(data_dir / "train" / f"{row['image']}.jpeg"), int(row["level"])) for row in csv.DictReader(handle)]
    if limit_patients is not None:
        keep = sorted({_patient(path) for path, _ in rows})[:limit_patients]
        rows = [row for row in rows if _patient(row[0]) in set(keep)]
    return rows


def _patient(path: str) -> str:
    return Path(path).stem.rsplit("_", 1)[0]


def split_by_patient(rows: list[tuple[str, int]], seed: int) -> tuple[list, list]:
    """Two halves with no patient in both (both eyes of a patient stay together)."""
    patients = sorted({_patient(path) for path, _ in rows})
    order = np.random.default_rng(seed).permutation(len(patients))
    bank_patients = {patients[index] for index in order[: len(patients) // 2]}
    bank = [row for row in rows if _patient(row[0]) in bank_patients]
    graded = [row for row in rows if _patient(row[0]) not in bank_patients]
    return bank, graded


def fit_feature_statistics(model: RetinaScanModel, processor: RetinaScanImageProcessor, paths: list[str]) -> None:
    """Standardise `model`'s backbone features with those of the first `STATISTICS_IMAGES` usable photographs of
    `paths`, as training does: a random tower's features then spread between photographs as the heads expect."""
    arrays = []
    for path in paths:
        try:
            arrays.append(processor.normalize_image(processor.to_model_image(path)))
        except ValueError:  # an ungradable photograph
            continue
        if len(arrays) == STATISTICS_IMAGES:
            break
    with torch.no_grad():
        model.set_feature_statistics(model.forward_features(torch.from_numpy(np.stack(arrays))))


def prepare_model(model_dir: Path, bank_rows: list, calibration_size: int, static: bool) -> None:
    """Random ViT-B/16 folder with standardisation fitted on bank images, exported fp32 + int8 (+ static int8)."""
    if (model_dir / ONNX_SUBFOLDER / EXPORT_CONFIG_NAME).is_file():
        return
    model, processor = random_retinascan(clip_config=vit_b16_clip_config(), seed=0)
    fit_feature_statistics(model, processor, [path for path, _ in bank_rows])
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    if static:
        calibration = model_dir.parent / "calibration"
        calibration.mkdir(exist_ok=True)
        for path, _ in bank_rows:
            link = calibration / Path(path).name
            if not link.exists():
                link.symlink_to(Path(path).resolve())
        export_onnx(
            model_dir,
            model_dir / VARIANTS["int8_static"][1],
            int8=True,
            quantization="static",
            calibration_data=calibration,
            calibration_size=calibration_size,
        )
    export_onnx(model_dir, int8=True)


def _run_half(
    models: dict[str, RetinaScanOnnxModel],
    processor: RetinaScanImageProcessor,
    rows: list,
    cache: Path,
    batch_size: int,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """Outputs of every variant on `rows` (cached in `cache`, so a killed run resumes per half), seconds each."""
    if cache.is_file():
        flat = load_file(cache)
        outputs = {name: {} for name in models}
        for key, tensor in flat.items():
            name, field = key.split("/", 1)
            outputs[name][field] = tensor
        seconds = {name: float(outputs[name].pop("seconds")) for name in models}
        return outputs, seconds
    collected: dict[str, list[RetinaScanOutput]] = {name: [] for name in models}
    valid: list[bool] = []
    seconds = dict.fromkeys(models, 0.0)
    for start in tqdm(range(0, len(rows), batch_size), desc=cache.stem, unit="batch"):
        arrays = []
        for path, _ in rows[start : start + batch_size]:
            try:
                arrays.append(processor.normalize_image(processor.to_model_image(path)))
                valid.append(True)
            except ValueError:  # ungradable photographs are flagged by the pipeline, not graded: leave them out
                valid.append(False)
        if not arrays:
            continue
        pixel_values = torch.from_numpy(np.stack(arrays))
        for name, model in models.items():
            started = time.perf_counter()
            collected[name].append(model(pixel_values=pixel_values))
            seconds[name] += time.perf_counter() - started
    outputs = {}
    for name, parts in collected.items():
        outputs[name] = {
            field.name: torch.cat([getattr(part, field.name) for part in parts])
            for field in fields(RetinaScanOutput)
            if getattr(parts[0], field.name) is not None
        }
        outputs[name]["valid"] = torch.tensor(valid)
    flat = {f"{name}/{field}": tensor.contiguous() for name, out in outputs.items() for field, tensor in out.items()}
    flat.update({f"{name}/seconds": torch.tensor(value) for name, value in seconds.items()})
    save_file(flat, str(cache.with_suffix(".tmp")))
    cache.with_suffix(".tmp").rename(cache)
    return outputs, seconds


def _as_output(tensors: dict[str, torch.Tensor]) -> RetinaScanOutput:
    return RetinaScanOutput(**{key: value for key, value in tensors.items() if key != "valid"})


def feature_error_ratio(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """How large `candidate`'s error is next to how `reference` features vary between images `[N, D]`: the std of
    the error over the std across images (averaged over dimensions). Backbone features of a random tower hardly
    differ between photographs, so this ratio, not the cosine, says how hard the decisions are to keep."""
    spread = reference.float().std(dim=0).mean()
    return float((candidate.float() - reference.float()).std() / spread)


def compare(
    reference: RetinaScanOutput,
    candidate: RetinaScanOutput,
    config: Any,
    reference_bank: FeatureBank,
    candidate_bank: FeatureBank,
) -> dict[str, Any]:
    """Agreement of `candidate`'s decisions with `reference`'s in every mode, and how far scores and logits move."""
    result: dict[str, Any] = {}
    settings = [(mode, mode, reference_bank) for mode in DECISION_MODES]
    settings.append(("knn_own_bank", "knn", candidate_bank))
    for label, mode, bank in settings:
        expected = decide(reference, mode, config, reference_bank)
        actual = decide(candidate, mode, config, bank)
        agree = (expected.grades == actual.grades).float()
        # How decided the fp32 decision was: its top-two score margin. Flips at near-ties are what int8 noise does.
        top_two = expected.scores.float().topk(2, dim=-1).values
        margin = top_two[:, 0] - top_two[:, 1]
        flipped = margin[agree == 0]
        result[label] = {
            "agreement": round(float(agree.mean()), 5),
            "disagreements": int((1 - agree).sum()),
            "max_abs_score_difference": round(float((expected.scores - actual.scores).abs().max()), 5),
            "max_abs_grade_difference": int((expected.grades - actual.grades).abs().max()),
            "median_fp32_margin": round(float(margin.median()), 5),
            "max_fp32_margin_of_a_disagreement": round(float(flipped.max()), 5) if len(flipped) else None,
        }
    for name in ("image_features", "embeddings"):
        cosine = torch.nn.functional.cosine_similarity(getattr(reference, name), getattr(candidate, name))
        result[f"{name}_cosine"] = {"min": round(float(cosine.min()), 6), "mean": round(float(cosine.mean()), 6)}
    result["image_features_error_over_between_image_spread"] = round(
        feature_error_ratio(reference.image_features, candidate.image_features), 4
    )
    for name in ("ordinal_logits", "prototype_logits"):
        result[f"max_abs_{name}_difference"] = round(
            float((getattr(reference, name) - getattr(candidate, name)).abs().max()), 5
        )
    return result


def train_heads(
    model: RetinaScanModel, features: torch.Tensor, grades: torch.Tensor, patients: list[str], output_dir: Path
) -> dict[str, Any]:
    """Train `model`'s heads in place on backbone `features` `[N, D]` with the library's trainer (reference
    configuration: 50 epochs, balanced batches of 40), holding out every `HEAD_VALIDATION_EVERY`-th patient for
    validation; the final weights are kept (the trainer's best are a selection, not needed here). Returns what
    the run was: images per side and the last epoch's validation metrics."""
    ordered = sorted(set(patients))
    if len(ordered) < 2:
        raise ValueError(
            f"Training heads needs bank images of at least 2 patients (one validates), got {len(ordered)}."
        )
    held_out = {patient for index, patient in enumerate(ordered) if index % HEAD_VALIDATION_EVERY == 0}
    validation = torch.tensor([patient in held_out for patient in patients])
    splits = []
    for rows in (~validation, validation):
        index = rows.nonzero().flatten()
        names = [f"parity/{patients[i]}/{i}" for i in index.tolist()]
        splits.append(
            CachedSplit(features[index, None].float().clone(), grades[index].clone(), names, ["eyepacs"] * len(names))
        )
    config = TrainingConfig(
        output_dir=str(output_dir), n_views=1, cpu=True, progress=False, seed=0, log_with=[], overwrite_output_dir=True
    )
    trainer = RetinaScanTrainer(model, config, splits[0], splits[1], make_accelerator(config))
    trainer.train()
    last = trainer.history[-1]
    return {
        "configuration": "TrainingConfig defaults (reference)",
        "epochs": config.num_epochs,
        "train_images": len(splits[0]),
        "validation_images": len(splits[1]),
        "validation_qwk": round(last["val/qwk"], 4),
        "validation_accuracy": round(last["val/accuracy"], 4),
    }


def head_decisions(model: RetinaScanModel, image_features: torch.Tensor) -> RetinaScanOutput:
    """`model`'s heads (eval mode, fp32) on backbone features from any graph: what that graph's heads output."""
    model.eval()
    with torch.no_grad():
        return model.forward_head(image_features.float())


def compare_trained_heads(
    model_dir: Path,
    bank_out: dict[str, dict[str, torch.Tensor]],
    graded_out: dict[str, dict[str, torch.Tensor]],
    bank_grades: torch.Tensor,
    bank_patients: list[str],
    work_dir: Path,
) -> dict[str, Any]:
    """Every int8 variant against fp32 as in [`compare`], after training the folder's heads on the bank half's fp32
    features; each variant's decisions come from its own backbone features through the same trained heads."""
    model = RetinaScanModel.from_pretrained(model_dir)
    training = train_heads(model, bank_out["fp32"]["image_features"], bank_grades, bank_patients, work_dir / "heads")
    config_hash = model.config.embedding_hash()
    outputs, banks = {}, {}
    for name in bank_out:
        outputs[name] = head_decisions(model, graded_out[name]["image_features"])
        banks[name] = FeatureBank(
            head_decisions(model, bank_out[name]["image_features"]).embeddings, bank_grades, config_hash=config_hash
        )
    comparisons = {
        f"{name}_vs_fp32": compare(outputs["fp32"], outputs[name], model.config, banks["fp32"], banks[name])
        for name in outputs
        if name != "fp32"
    }
    return {"training": training, "comparisons": comparisons}


def run_onnx_parity(
    data_dir: str | Path,
    work_dir: str | Path,
    *,
    batch_size: int = 16,
    threads: int | None = None,
    static: bool = True,
    calibration_size: int = 128,
    limit_patients: int | None = None,
    seed: int = 0,
    trained_heads: bool = False,
) -> dict[str, Any]:
    """Run the protocol above; return the results (agreement per variant and mode, timings, machine)."""
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    rows = read_labels(data_dir, limit_patients)
    bank_rows, graded_rows = split_by_patient(rows, seed)
    model_dir = work_dir / "model"
    prepare_model(model_dir, bank_rows, calibration_size, static)
    names = [name for name in VARIANTS if static or name != "int8_static"]
    models = {
        name: RetinaScanOnnxModel.from_pretrained(
            model_dir, variant=VARIANTS[name][0], onnx_dir=model_dir / VARIANTS[name][1], num_threads=threads
        )
        for name in names
    }
    processor = RetinaScanImageProcessor.from_pretrained(model_dir)
    bank_out, bank_seconds = _run_half(models, processor, bank_rows, work_dir / "bank_half.safetensors", batch_size)
    graded_out, graded_seconds = _run_half(
        models, processor, graded_rows, work_dir / "graded_half.safetensors", batch_size
    )
    bank_valid = bank_out["fp32"]["valid"]
    bank_grades = torch.tensor([grade for _, grade in bank_rows])[bank_valid]
    config = models["fp32"].config
    banks = {
        name: FeatureBank(bank_out[name]["embeddings"], bank_grades, config_hash=config.embedding_hash())
        for name in names
    }
    reference = _as_output(graded_out["fp32"])
    images = {half: int(out["fp32"]["valid"].sum()) for half, out in (("bank", bank_out), ("graded", graded_out))}
    results: dict[str, Any] = {
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "data": str(data_dir),
        "images": {**images, "ungradable": len(rows) - sum(images.values())},
        "patients": {
            "bank": len({_patient(p) for p, _ in bank_rows}),
            "graded": len({_patient(p) for p, _ in graded_rows}),
        },
        "export": {name: models[name].record.variants[VARIANTS[name][0]] for name in names},
        "seconds_per_image": {
            name: round((bank_seconds[name] + graded_seconds[name]) / sum(images.values()), 4) for name in names
        },
        "batch_size": batch_size,
        "comparisons": {},
        "machine": machine_info(),
    }
    for name in names:
        if name != "fp32":
            results["comparisons"][f"{name}_vs_fp32"] = compare(
                reference, _as_output(graded_out[name]), config, banks["fp32"], banks[name]
            )
    if trained_heads:
        bank_patients = [
            _patient(path) for (path, _), valid in zip(bank_rows, bank_valid.tolist(), strict=True) if valid
        ]
        results["trained_heads"] = compare_trained_heads(
            model_dir, bank_out, graded_out, bank_grades, bank_patients, work_dir
        )
    return results


__all__ = [
    "compare",
    "compare_trained_heads",
    "fit_feature_statistics",
    "head_decisions",
    "read_labels",
    "run_onnx_parity",
    "split_by_patient",
    "train_heads",
]
