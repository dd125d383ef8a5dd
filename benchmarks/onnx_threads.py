"""How should idle threads wait (issue 10, item 4)? The int8 pipeline on one JPEG and the bare forward of its
session, for each way ONNX Runtime's threads can wait and with torch's thread count left as set, all timed in turn
in one process.

Between its parallel operators a graph run leaves its worker threads idle for microseconds; between two pipeline
calls they stay idle for milliseconds while the pipeline decodes the next image and runs the kNN's torch ops.
Sleeping in both gaps saves CPU but wakes the threads hundreds of times per run; spinning in both (ONNX Runtime's
default) keeps the run fast but takes a core from the pipeline's own work. Spinning during a run and stopping when
it returns is meant to have both. torch's OpenMP workers spin after torch's own parallel operations in the same
way, so the ONNX pipeline grades with one torch thread; the last row lifts that. Each row reports the bare forward
(a tight loop, as a user timing the session alone would see it), the pipeline end to end, and the pipeline's CPU
time per call (all threads).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Pipeline

from retinascan_hf.loading import load_pipeline
from retinascan_hf.onnx_backend import ONNX_SUBFOLDER, ONNX_VARIANT_FILES, SESSION_THREAD_CONFIG, _make_session

THREAD_CONFIGS: dict[str, dict[str, str]] = {
    "sleep": {"session.intra_op.allow_spinning": "0"},  # the export's default before this measurement
    "spin": {"session.intra_op.allow_spinning": "1"},  # ONNX Runtime's own default
    "spin_during_run": SESSION_THREAD_CONFIG,  # the default now: spin while running, stop when the run returns
}
# The default session, with the pipeline's calls made at torch's own thread count instead of one thread.
ALL_TORCH_THREADS = "spin_during_run_all_torch_threads"


def run_onnx_threads(
    model_dir: str | Path, jpeg: str | Path, *, threads: int, rounds: int = 12, block: int = 4
) -> dict[str, Any]:
    """Median ms of the bare int8 forward and of the pipeline, and the pipeline's CPU ms per call, for each of
    `THREAD_CONFIGS` and for `ALL_TORCH_THREADS`. Each round runs, for every configuration in turn, `block`
    forwards then `block` pipeline calls (after one warm-up call of each), so the machine's slow spells weigh on
    every configuration alike."""
    grader = load_pipeline(model_dir, backend="onnx", onnx_variant="int8", onnx_threads=threads)
    pixel_values = grader.image_processor(str(jpeg), return_tensors="pt")["pixel_values"]
    graph = str(Path(model_dir) / ONNX_SUBFOLDER / ONNX_VARIANT_FILES["int8"])
    sessions = {  # the pipeline's own session serves the default configuration
        name: grader.model.session if config == SESSION_THREAD_CONFIG else _make_session(graph, threads, config)
        for name, config in THREAD_CONFIGS.items()
    }
    sessions[ALL_TORCH_THREADS] = sessions["spin_during_run"]
    samples: dict[str, dict[str, list[float]]] = {
        name: {"forward": [], "pipeline": [], "pipeline_cpu": []} for name in sessions
    }

    def forward() -> None:
        grader.model(pixel_values=pixel_values)

    def pipeline(name: str) -> None:
        if name == ALL_TORCH_THREADS:  # transformers' own __call__: RetinaScanPipeline's sets one torch thread
            Pipeline.__call__(grader, str(jpeg), mode="knn")
        else:
            grader(str(jpeg), mode="knn")

    for round_index in range(rounds + 1):
        for name, session in sessions.items():
            grader.model.session = session
            for _ in range(1 if round_index == 0 else block):
                started = time.perf_counter()
                forward()
                if round_index:
                    samples[name]["forward"].append(time.perf_counter() - started)
            for _ in range(1 if round_index == 0 else block):
                cpu, started = time.process_time(), time.perf_counter()
                pipeline(name)
                if round_index:
                    samples[name]["pipeline"].append(time.perf_counter() - started)
                    samples[name]["pipeline_cpu"].append(time.process_time() - cpu)
    medians = {
        name: {quantity: round(statistics.median(values) * 1e3, 3) for quantity, values in measured.items()}
        for name, measured in samples.items()
    }
    fastest_forward = min(result["forward"] for result in medians.values())
    for result in medians.values():
        result["pipeline_over_own_forward"] = round(result["pipeline"] / result["forward"], 4)
        result["pipeline_over_fastest_forward"] = round(result["pipeline"] / fastest_forward, 4)
    return {
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "configs": {**THREAD_CONFIGS, ALL_TORCH_THREADS: SESSION_THREAD_CONFIG},
        "torch_threads_during_a_call": {
            **dict.fromkeys(THREAD_CONFIGS, 1),
            ALL_TORCH_THREADS: torch.get_num_threads(),
        },
        "default": next(name for name, config in THREAD_CONFIGS.items() if config == SESSION_THREAD_CONFIG),
        "threads": threads,
        "calls_per_side": rounds * block,
        "results_ms": medians,
    }


def format_table(results: dict[str, Any]) -> str:
    """One line per configuration: medians in ms, CPU ms per pipeline call, and the two pipeline ratios."""
    lines = [
        f"{'threads wait':34} {'forward':>9} {'pipeline':>9} {'CPU/call':>9} {'/ own fwd':>10} {'/ fastest fwd':>14}"
    ]
    for name, result in results["results_ms"].items():
        marker = " (default)" if name == results["default"] else ""
        lines.append(
            f"{name:34} {result['forward']:9.2f} {result['pipeline']:9.2f} {result['pipeline_cpu']:9.2f} "
            f"{result['pipeline_over_own_forward']:10.3f} {result['pipeline_over_fastest_forward']:14.3f}{marker}"
        )
    return "\n".join(lines)


__all__ = ["ALL_TORCH_THREADS", "THREAD_CONFIGS", "format_table", "run_onnx_threads"]
