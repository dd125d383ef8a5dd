"""How should ONNX Runtime's idle threads wait (issue 10, item 4)? The int8 pipeline on one JPEG and the bare forward
of its session, for each way of waiting, all timed in turn in one process.

Between its parallel operators a graph run leaves its worker threads idle for microseconds; between two pipeline
calls they stay idle for milliseconds while the pipeline decodes the next image and runs the kNN's torch ops.
Sleeping in both gaps saves CPU but wakes the threads hundreds of times per run; spinning in both (ONNX Runtime's
default) keeps the run fast but takes a core from the pipeline's own work. Spinning during a run and stopping when
it returns is meant to have both. Each configuration reports the bare forward (a tight loop, as a user timing the
session alone would see it), the pipeline end to end, and the pipeline's CPU time per call (all threads).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from retinascan_hf.loading import load_pipeline
from retinascan_hf.onnx_backend import ONNX_SUBFOLDER, ONNX_VARIANT_FILES, SESSION_THREAD_CONFIG, _make_session

THREAD_CONFIGS: dict[str, dict[str, str]] = {
    "sleep": {"session.intra_op.allow_spinning": "0"},  # the export's default before this measurement
    "spin": {"session.intra_op.allow_spinning": "1"},  # ONNX Runtime's own default
    "spin_during_run": SESSION_THREAD_CONFIG,  # the default now: spin while running, stop when the run returns
}


def run_onnx_threads(
    model_dir: str | Path, jpeg: str | Path, *, threads: int, rounds: int = 12, block: int = 4
) -> dict[str, Any]:
    """Median ms of the bare int8 forward and of the pipeline, and the pipeline's CPU ms per call, for each of
    `THREAD_CONFIGS`. Each round runs, for every configuration in turn, `block` forwards then `block` pipeline
    calls (after one warm-up call of each), so the machine's slow spells weigh on every configuration alike."""
    grader = load_pipeline(model_dir, backend="onnx", onnx_variant="int8", onnx_threads=threads)
    pixel_values = grader.image_processor(str(jpeg), return_tensors="pt")["pixel_values"]
    graph = str(Path(model_dir) / ONNX_SUBFOLDER / ONNX_VARIANT_FILES["int8"])
    sessions = {name: _make_session(graph, threads, config) for name, config in THREAD_CONFIGS.items()}
    samples: dict[str, dict[str, list[float]]] = {
        name: {"forward": [], "pipeline": [], "pipeline_cpu": []} for name in sessions
    }

    def forward() -> None:
        grader.model(pixel_values=pixel_values)

    def pipeline() -> None:
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
                pipeline()
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
        "configs": THREAD_CONFIGS,
        "default": next(name for name, config in THREAD_CONFIGS.items() if config == SESSION_THREAD_CONFIG),
        "threads": threads,
        "calls_per_side": rounds * block,
        "results_ms": medians,
    }


def format_table(results: dict[str, Any]) -> str:
    """One line per configuration: medians in ms, CPU ms per pipeline call, and the two pipeline ratios."""
    lines = [
        f"{'threads wait':18} {'forward':>9} {'pipeline':>9} {'CPU/call':>9} {'/ own fwd':>10} {'/ fastest fwd':>14}"
    ]
    for name, result in results["results_ms"].items():
        marker = " (default)" if name == results["default"] else ""
        lines.append(
            f"{name:18} {result['forward']:9.2f} {result['pipeline']:9.2f} {result['pipeline_cpu']:9.2f} "
            f"{result['pipeline_over_own_forward']:10.3f} {result['pipeline_over_fastest_forward']:14.3f}{marker}"
        )
    return "\n".join(lines)


__all__ = ["THREAD_CONFIGS", "format_table", "run_onnx_threads"]
