"""`retinascan explain`'s work: grade images with Grad-CAM and save `original | heat map | overlay` panels.

One PNG per gradable image (`<stem>.gradcam.png`, written atomically, names made unique within a run) and
one JSON record per input (`explanations.jsonl`), so a batch with a bad file still explains the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from .gradcam_retinascan import check_panel_size, check_target_grade, explanation_panels
from .pipeline_retinascan import RetinaScanPipeline

RECORDS_NAME = "explanations.jsonl"
_IMAGE_KEYS = ("heatmap", "overlay")


def _stem(source: str) -> str:
    path = urlparse(source).path if source.startswith(("http://", "https://")) else source
    return Path(path).stem or "image"


def unique_panel_names(sources: Sequence[str]) -> list[str]:
    """`<stem>.gradcam.png` per source; repeated stems (`a/x.jpg`, `b/x.jpg`) get `-2`, `-3`, ... suffixes."""
    names, seen = [], {}
    for source in sources:
        stem = _stem(source)
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.gradcam.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.gradcam.png")
    return names


def _save_png(image, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    image.save(temporary, format="PNG")
    os.replace(temporary, target)


def explain_images(
    grader: RetinaScanPipeline,
    images: Sequence[str],
    output_dir: str | os.PathLike,
    *,
    mode: str | None = None,
    heatmap_grade: int | None = None,
    batch_size: int = 8,
    panel_size: int = 256,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Explain each image in `images` (paths or URLs) into `output_dir`; returns one JSON-ready record each.

    A record is the pipeline's result without the arrays, plus `image` and, for a gradable image, `panel`
    (the PNG's path) and `heatmap_grade` (the grade the map explains).
    """
    check_panel_size(panel_size)  # every setting is checked before any image is graded
    if heatmap_grade is not None:
        check_target_grade(heatmap_grade, grader.model.config.num_labels)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"The batch size must be a positive integer, got {batch_size!r}.")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    options = {"return_heatmap": True, "heatmap_grade": heatmap_grade}
    if mode is not None:
        options["mode"] = mode
    records = []
    names = unique_panel_names(images)
    with tqdm(total=len(images), desc="explain", unit="image", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            chunk = list(images[start : start + batch_size])
            results = grader(chunk, batch_size=batch_size, **options)
            for source, name, result in zip(chunk, names[start : start + batch_size], results, strict=True):
                record = {"image": source, **{key: value for key, value in result.items() if key not in _IMAGE_KEYS}}
                if result["gradable"]:
                    explained = result["grade"] if heatmap_grade is None else heatmap_grade
                    title = f"{_stem(source)}: grade {result['grade']} ({result['label']}), {result['mode']}"
                    if heatmap_grade is not None:
                        title += f"; map of grade {heatmap_grade}"
                    picture = grader.image_processor.to_model_image(source)
                    panel = explanation_panels(picture, result["heatmap"], title=title, panel_size=panel_size)
                    _save_png(panel, output / name)
                    record.update(heatmap_grade=explained, panel=str(output / name))
                records.append(record)
            bar.update(len(chunk))
    (output / f".{RECORDS_NAME}.tmp").write_text("".join(json.dumps(record) + "\n" for record in records))
    os.replace(output / f".{RECORDS_NAME}.tmp", output / RECORDS_NAME)
    return records


__all__ = ["RECORDS_NAME", "explain_images", "unique_panel_names"]
