"""Peak memory of grading one image in a fresh process: what a clinic machine must have free.

`python -m benchmarks.memory MODEL_DIR IMAGE BACKEND` loads the model with `load_pipeline` (ONNX: the graph, no
torch weights), grades the image and prints its own peak RSS as JSON; [`peak_rss_of_grading`] runs it as a
subprocess, so nothing the benchmark itself allocated is counted.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def peak_rss_of_grading(model_dir: str | Path, image: str | Path, backend: str, threads: int | None = None) -> dict:
    """`{"peak_rss_mib", "grade", "gradable"}` of a fresh process grading `image` with `backend` (`"torch"` or
    `"onnx"`, the int8 graph)."""
    command = [sys.executable, "-m", "benchmarks.memory", str(model_dir), str(image), backend]
    if threads is not None:
        command.append(str(threads))
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe for backend={backend} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _grade_once(model_dir: str, image: str, backend: str, threads: int | None) -> dict:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    from retinascan_hf import load_pipeline

    grader = load_pipeline(model_dir, backend=backend, onnx_variant="int8")
    result = grader(image)
    return {"peak_rss_mib": round(_peak_rss_mib(), 1), "grade": result["grade"], "gradable": result["gradable"]}


def _peak_rss_mib() -> float:
    """This process's peak RSS. Linux's `ru_maxrss` survives `exec` (a child started by a 2-GB parent would report
    2 GB), so read the address space's own high-water mark, `VmHWM`, where there is one."""
    from benchmarks.timing import proc_status_mib

    peak = proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    print(json.dumps(_grade_once(*arguments[:3], int(arguments[3]) if len(arguments) > 3 else None)))
