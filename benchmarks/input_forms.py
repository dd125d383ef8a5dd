"""Does a photograph get the same picture, scores and grade whichever form it is passed in (issue 7, item 3)?

Protocol: every camera original of eyepacs-originals is given as a path, as bytes, as the decoded PIL image a
`datasets` Image column yields and as a numpy array. A reduction applies to these (12-15 MP, 4x at 224 px): JPEG
paths and bytes are reduced by the decoder (DCT scaling), the decoded forms by a box filter, with the same factor.
Compared with the path: the model's 224 px picture (mean and largest |difference| in grey levels), the fundus box,
the gradability check's verdict, and the decisions of a random-weight ViT-B/16 model (feature standardisation
fitted on 64 EyePACS-256 photographs, a bank of EyePACS-256 photographs with their grades) in every mode, taken
from the model's outputs so that photographs the checks would flag are compared too. The EyePACS-256 photographs
(256 px: no reduction applies) are checked for identical pictures in every form.

A random tower is the harsh case: its features hardly differ between photographs, so small pixel differences move
neighbours and kNN scores more than a trained tower's would (see `benchmarks/onnx_parity.py`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.machine import machine_info
from benchmarks.onnx_parity import compare, fit_feature_statistics, read_labels
from retinascan_hf.feature_bank import FeatureBank
from retinascan_hf.image_processing_retinascan import RetinaScanImageProcessor
from retinascan_hf.modeling_retinascan import RetinaScanModel, RetinaScanOutput
from retinascan_hf.tiny_clip import random_retinascan, vit_b16_clip_config

FORMS = ("path", "bytes", "datasets_pil", "numpy")


def datasets_images(paths: list[Path]) -> list[Image.Image]:
    """The PIL images a `datasets` Image column yields for `paths`."""
    column = datasets.Dataset.from_dict({"image": [str(path) for path in paths]})
    return column.cast_column("image", datasets.Image())["image"]


def forms_of(path: Path, from_datasets: Image.Image) -> dict[str, Any]:
    return {
        "path": path,
        "bytes": path.read_bytes(),
        "datasets_pil": from_datasets,
        "numpy": np.asarray(from_datasets),
    }


def _outputs(model: RetinaScanModel, processor: RetinaScanImageProcessor, sources: list, batch: int = 8):
    parts = []
    with torch.no_grad():
        for start in range(0, len(sources), batch):
            parts.append(model(pixel_values=processor(sources[start : start + batch])["pixel_values"]))
    names = [field.name for field in fields(RetinaScanOutput) if torch.is_tensor(getattr(parts[0], field.name))]
    return RetinaScanOutput(**{name: torch.cat([getattr(part, name) for part in parts]) for name in names})


def _picture_differences(processor: RetinaScanImageProcessor, forms: dict[str, Any]) -> dict[str, Any]:
    """The decoded size, and per form: |difference| of the model's picture to the path's in grey levels, whether the
    fundus box and the gradability check's verdict are the path's."""
    decoded = processor.load(forms["path"])
    reference, reference_box = processor.prepare(forms["path"]), processor.fundus_box(decoded)
    result: dict[str, Any] = {"decoded_size": list(decoded.size)}
    for name, source in forms.items():
        prepared = processor.prepare(source)
        difference = np.abs(np.asarray(prepared.image, np.int16) - np.asarray(reference.image, np.int16))
        result[name] = {
            "mean": round(float(difference.mean()), 4),
            "max": int(difference.max()),
            "same_fundus_box": processor.fundus_box(processor.load(source)) == reference_box,
            "same_gradability_verdict": prepared.problems == reference.problems,
        }
    return result


def _identical_small_photos(processor: RetinaScanImageProcessor, paths: list[Path]) -> dict[str, Any]:
    identical = 0
    for path, from_datasets in zip(paths, datasets_images(paths), strict=True):
        pictures = [np.asarray(processor.to_model_image(source)) for source in forms_of(path, from_datasets).values()]
        identical += all(np.array_equal(picture, pictures[0]) for picture in pictures[1:])
    return {"photos": len(paths), "identical_in_every_form": identical}


def run_input_forms(
    data_dir: str | Path, *, bank_size: int = 192, small_photos: int = 500, seed: int = 0
) -> dict[str, Any]:
    """Run the protocol above on `data_dir` (holding eyepacs-256 and eyepacs-originals); return the results."""
    data_dir = Path(data_dir)
    rows = read_labels(data_dir / "eyepacs-256")
    order = np.random.default_rng(seed).permutation(len(rows))
    bank_rows = [rows[index] for index in order[:bank_size]]
    originals = sorted((data_dir / "eyepacs-originals" / "train").glob("*.jpeg"))

    model, processor = random_retinascan(clip_config=vit_b16_clip_config(), seed=0)
    fit_feature_statistics(model, processor, [path for path, _ in bank_rows])
    model.eval()
    bank_outputs = _outputs(model, processor, [path for path, _ in bank_rows])
    bank = FeatureBank(bank_outputs.embeddings, [grade for _, grade in bank_rows])

    by_form: dict[str, list] = {name: [] for name in FORMS}
    pictures: dict[str, dict[str, dict[str, Any]]] = {}
    for path, from_datasets in tqdm(list(zip(originals, datasets_images(originals), strict=True)), desc="forms"):
        forms = forms_of(path, from_datasets)
        for name, source in forms.items():
            by_form[name].append(source)
        pictures[path.name] = _picture_differences(processor, forms)
    outputs = {name: _outputs(model, processor, sources) for name, sources in by_form.items()}

    comparisons = {}
    for name in FORMS[1:]:
        per_photo = [pictures[photo][name] for photo in pictures]
        decisions = compare(outputs["path"], outputs[name], model.config, bank, bank)
        decisions.pop("knn_own_bank")  # one bank here
        comparisons[f"{name}_vs_path"] = {
            "picture_mean_abs_difference": round(float(np.mean([entry["mean"] for entry in per_photo])), 4),
            "picture_mean_abs_difference_worst_photo": max(entry["mean"] for entry in per_photo),
            "picture_max_abs_difference": max(entry["max"] for entry in per_photo),
            "photos_with_the_same_fundus_box": sum(entry["same_fundus_box"] for entry in per_photo),
            "photos_with_the_same_gradability_verdict": sum(entry["same_gradability_verdict"] for entry in per_photo),
            **decisions,
        }
    return {
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "data": str(data_dir),
        "camera_originals": len(originals),
        "output_size": processor.output_size,
        "bank_photos": bank_size,
        "comparisons": comparisons,
        "per_photo": pictures,
        "eyepacs_256": _identical_small_photos(processor, [Path(path) for path, _ in rows[:small_photos]]),
        "machine": machine_info(),
    }


def format_summary(results: dict[str, Any]) -> str:
    lines = [
        f"{results['camera_originals']} camera originals, {results['output_size']} px output; vs the path:",
        f"{'form':<14} {'pix mean':>8} {'pix max':>7} {'box':>4} {'check':>5} "
        + " ".join(f"{mode + ' agree/max':>22}" for mode in ("knn", "ordinal", "prototype")),
    ]
    for label, entry in results["comparisons"].items():
        modes = " ".join(
            f"{entry[mode]['agreement']:>11.3f} / {entry[mode]['max_abs_score_difference']:<8.5f}"
            for mode in ("knn", "ordinal", "prototype")
        )
        lines.append(
            f"{label.removesuffix('_vs_path'):<14} {entry['picture_mean_abs_difference']:>8.3f} "
            f"{entry['picture_max_abs_difference']:>7} {entry['photos_with_the_same_fundus_box']:>4} "
            f"{entry['photos_with_the_same_gradability_verdict']:>5} {modes}"
        )
    small = results["eyepacs_256"]
    lines.append(f"eyepacs-256: {small['identical_in_every_form']} of {small['photos']} identical in every form")
    return "\n".join(lines)


__all__ = ["FORMS", "format_summary", "run_input_forms"]
