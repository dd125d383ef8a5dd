"""Which layers does int8 error come from (issue 10, item 3)? The image tower quantised with groups of its layers
kept in float32, one group at a time, each against the fp32 export on the same photographs.

Agreement of int8 and fp32 grades is decided by how far int8 moves an image's features *relative to how far
images' features lie apart* (`feature_error_ratio`), not by their cosine (0.9998 here): a random-weight tower maps
every photograph to nearly the same feature vector. If one group of layers caused most of that error, keeping it in
float32 would buy agreement at a small speed cost; each row says how much error is left and what the graph then
costs per image, both against the export's default in the same run (the times in alternating blocks). The
first rows are why the export keeps the position lookup, the patch embedding and the visual projection in float32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.onnx_parity import feature_error_ratio
from benchmarks.timing import time_alternately, time_call
from retinascan_hf.onnx_backend import ONNX_INPUT_NAME, ONNX_SUBFOLDER, ONNX_VARIANT_FILES, _make_session
from retinascan_hf.onnx_export import (
    export_onnx,
    float32_node_names,
    head_node_names,
    quantize_onnx,
    with_quantiser_aliases,
)
from retinascan_hf.synthetic import synthetic_fundus_set
from retinascan_hf.tiny_clip import random_retinascan, tiny_clip_config, vit_b16_clip_config

DEFAULT = "the export's default (heads, lookups, patch embedding, visual projection)"
# Per encoder layer the exported graph holds six weight MatMuls, in this order (CLIPEncoderLayer's Linear layers).
LAYER_MATMULS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def weight_matmuls(graph: Any) -> list[str]:
    """The image tower's matrix products with a weight (initializer) operand, in graph order: the quantiser's
    targets (MatMul nodes, and the visual projection's Gemm, which the exporter emits for a 2-D input)."""
    weights = {initializer.name for initializer in graph.initializer}
    heads = set(head_node_names(graph))
    return [
        node.name
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights and node.name not in heads
    ]


def float32_choices(graph: Any, num_layers: int) -> dict[str, list[str]]:
    """Named choices of image-tower nodes to keep in float32 (the heads always are): the heads alone, each of the
    three parts the export keeps besides them, the export's default, the default plus a group of encoder Linear
    layers, and everything (which must leave no error)."""
    lookups = [node.name for node in graph.node if node.op_type == "Gather"]
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    matmuls = weight_matmuls(graph)
    per_layer = len(LAYER_MATMULS)
    if len(matmuls) != per_layer * num_layers + 1:
        raise ValueError(
            f"Expected {per_layer} weight MatMuls per layer x {num_layers} layers + the visual projection, found "
            f"{len(matmuls)}: the exported graph's layout changed, so the groups below would be wrong."
        )
    projection = matmuls[-1:]
    heads = set(head_node_names(graph))
    default = [name for name in float32_node_names(graph) if name not in heads and not name.endswith("_MatMul")]
    if sorted(default) != sorted(lookups + convs + projection):
        raise ValueError(f"The export's float32 parts changed ({sorted(default)}): update these choices.")

    def kind(*names: str) -> list[str]:
        slots = [LAYER_MATMULS.index(name) for name in names]
        return [matmuls[layer * per_layer + slot] for layer in range(num_layers) for slot in slots]

    return {
        DEFAULT: default,
        "heads only (the export before 2026-11-29)": [],
        "heads + position-embedding lookup": lookups,
        "heads + patch embedding (Conv)": convs,
        "heads + visual projection": projection,
        "default + first encoder layer": default + matmuls[:per_layer],
        "default + last encoder layer": default + matmuls[-1 - per_layer : -1],
        "default + attention q/k/v/out, all layers": default + kind("q_proj", "k_proj", "v_proj", "out_proj"),
        "default + MLP fc1, all layers": default + kind("fc1"),
        "default + MLP fc2, all layers": default + kind("fc2"),
        "everything (no int8 left)": lookups + convs + matmuls,
    }


def _features(session: Any, pixel_values: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [
            session.run(["image_features"], {ONNX_INPUT_NAME: pixel_values[start : start + batch_size]})[0]
            for start in range(0, len(pixel_values), batch_size)
        ]
    )


def run_int8_sensitivity(
    work_dir: str | Path,
    photographs: Sequence[str | Path] = (),
    *,
    quick: bool = False,
    threads: int = 2,
    batch_size: int = 16,
    repeats: int = 20,
) -> dict[str, Any]:
    """Export a random-weight model (ViT-B/16, or tiny with `quick`), then for each group of `layer_groups`
    quantise with it kept in float32 and measure `feature_error_ratio` on `photographs` (synthetic fundus
    pictures when none are given) and the batch-1 time of the graph, relative to the export's default."""
    import onnx

    work_dir = Path(work_dir)
    clip_config = tiny_clip_config() if quick else vit_b16_clip_config()
    model, processor = random_retinascan(clip_config=clip_config, seed=0)
    model.save_pretrained(work_dir)
    processor.save_pretrained(work_dir)
    export_onnx(work_dir)
    source = work_dir / ONNX_SUBFOLDER / ONNX_VARIANT_FILES["fp32"]
    images = [str(path) for path in photographs] or synthetic_fundus_set(list(range(5)) * 4, size=128)
    pixel_values = processor(images, return_tensors="np")["pixel_values"]
    reference = torch.from_numpy(_features(_make_session(str(source), threads), pixel_values, batch_size))
    single = {ONNX_INPUT_NAME: pixel_values[:1]}
    rows, default_session = [], None
    graph = onnx.load(str(source), load_external_data=False).graph  # read once for every choice below
    heads = head_node_names(graph)
    for index, (name, keep) in enumerate(float32_choices(graph, clip_config.vision_config.num_hidden_layers).items()):
        target = work_dir / f"int8_choice_{index}.onnx"
        started = time.perf_counter()
        quantize_onnx(source, target, "dynamic", None, keep_fp32=heads + with_quantiser_aliases(keep))
        quantise_seconds = time.perf_counter() - started
        session = _make_session(str(target), threads)
        target.unlink()  # the session holds the graph
        features = torch.from_numpy(_features(session, pixel_values, batch_size))
        # Batch-1 time in alternating blocks with the default graph's (the first choice), as a ratio to it.
        if default_session is None:
            default_session = session
            default_seconds = seconds = time_call(lambda session=session: session.run(None, single), repeats, 2)
        else:
            default_seconds, seconds = time_alternately(
                lambda default=default_session: default.run(None, single),
                lambda session=session: session.run(None, single),
                repeats,
                2,
            )
        rows.append(
            {
                "kept_in_fp32": name,
                "tower_nodes_in_fp32": len(keep),
                "feature_error_ratio": round(feature_error_ratio(reference, features), 5),
                "ms_per_image": round(seconds * 1e3, 3),
                "time_vs_default": round(seconds / default_seconds, 4),
                "quantise_seconds": round(quantise_seconds, 1),
            }
        )
    for row in rows:
        row["error_vs_default"] = round(row["feature_error_ratio"] / rows[0]["feature_error_ratio"], 4)
    return {
        "model": "tiny CLIP, random weights" if quick else "CLIP ViT-B/16, 224 px, random weights",
        "images": len(pixel_values),
        "threads": threads,
        "quantisation": "dynamic, int8 weights per output channel, uint8 activations (the export's default)",
        "rows": rows,
    }


def format_table(results: dict[str, Any]) -> str:
    width = max(len(row["kept_in_fp32"]) for row in results["rows"])
    lines = [
        f"{results['model']}, {results['images']} images, {results['threads']} threads; ratios to the first row",
        f"{'kept in float32':<{width}} {'tower nodes':>11} {'error ratio':>11} {'x':>6} {'ms/image':>9} {'x':>6}",
    ]
    for row in results["rows"]:
        lines.append(
            f"{row['kept_in_fp32']:<{width}} {row['tower_nodes_in_fp32']:>11} {row['feature_error_ratio']:>11.4f} "
            f"{row['error_vs_default']:>6.3f} {row['ms_per_image']:>9.2f} {row['time_vs_default']:>6.3f}"
        )
    return "\n".join(lines)


__all__ = [
    "DEFAULT",
    "LAYER_MATMULS",
    "float32_choices",
    "format_table",
    "run_int8_sensitivity",
    "weight_matmuls",
]
