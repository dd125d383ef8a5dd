"""Verify a staged release the way its users will load it: a fresh process, nothing but transformers.

The staged folder is laid out as a Hugging Face Hub cache snapshot (`models--org--name/snapshots/<commit>/`),
and a subprocess with `HF_HUB_OFFLINE=1`, that never imports `retinascan_hf`, runs
`pipeline("retinascan", model=repo_id, trust_remote_code=True)` on a picture in every decision mode, and, when the
release holds an ONNX export, `backend="onnx"` with each of its graphs (checks labelled `"onnx-<variant>:<mode>"`,
see [`check_label`]). Its answers must equal those of the source model folder graded in this process with the
installed classes: a release that loads but grades differently (lost bank, wrong processor, broken remote code,
an ONNX export the released weights would not load) never reaches the Hub.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAKE_COMMIT = "0" * 40  # a snapshot needs a commit hash; the verification never talks to a Hub

_VERIFY_SCRIPT = r"""
import json, sys
from transformers import pipeline
repo_id, image, labels = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
graders, results = {}, {}
for label in labels:
    backend, _, mode = label.rpartition(":")
    if backend not in graders:
        options = {"backend": "onnx", "onnx_variant": backend.split("-", 1)[1]} if backend else {}
        graders[backend] = pipeline("retinascan", model=repo_id, trust_remote_code=True, **options)
    results[label] = graders[backend](image, mode=mode)
print(json.dumps({"results": results, "imported_retinascan_hf": "retinascan_hf" in sys.modules}))
"""


def check_label(mode: str, onnx_variant: str | None = None) -> str:
    """The name of one verification check: the decision mode, prefixed `onnx-<variant>:` for an ONNX graph."""
    return mode if onnx_variant is None else f"onnx-{onnx_variant}:{mode}"


class ReleaseVerificationError(RuntimeError):
    """The staged release does not load, or does not grade like its source model, in a fresh process."""


@dataclass
class VerificationReport:
    """Answers of the released repo (fresh process) and of the source folder (installed classes), per mode."""

    modes: list[str]
    released: dict[str, Any]
    reference: dict[str, Any]
    max_score_difference: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def materialize_snapshot(files: Mapping[str, bytes | Path], cache_dir: Path, repo_id: str) -> Path:
    """Write `files` (repo path -> bytes or a local file) as the Hub-cache snapshot of `repo_id` at `main`."""
    repo_folder = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / FAKE_COMMIT
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / "main").write_text(FAKE_COMMIT)
    return snapshot


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file under `folder`, keyed by its POSIX path relative to it."""
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


def load_in_fresh_process(
    cache_dir: Path, repo_id: str, image: Path, modes: list[str], timeout: float = 600.0
) -> dict[str, Any]:
    """Grade `image` in each mode through remote code in a subprocess that sees only the Hub cache."""
    home = Path(cache_dir).parent
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHONPATH"))},
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache_dir),
        "TRANSFORMERS_VERBOSITY": "error",
    }
    completed = subprocess.run(
        [sys.executable, "-c", _VERIFY_SCRIPT, repo_id, str(image), ",".join(modes)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
        raise ReleaseVerificationError(f"The release does not load with trust_remote_code in a fresh process:\n{tail}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def compare_results(released: Mapping[str, Any], reference: Mapping[str, Any], tolerance: float) -> tuple[float, list]:
    """Largest score difference and the list of disagreements between two `{mode: result}` mappings."""
    problems, largest = [], 0.0
    for mode, expected in reference.items():
        got = released.get(mode)
        if got is None:
            problems.append(f"mode {mode}: no answer from the release")
            continue
        for key in ("grade", "gradable", "referable", "mode"):
            if got.get(key) != expected.get(key):
                problems.append(f"mode {mode}: {key} {got.get(key)!r} != source model's {expected.get(key)!r}")
        if expected.get("scores") is not None and got.get("scores") is not None:
            difference = max(abs(a - b) for a, b in zip(got["scores"], expected["scores"], strict=True))
            largest = max(largest, difference)
            if not math.isfinite(difference) or difference > tolerance:
                problems.append(f"mode {mode}: scores differ by {difference:.2e} (tolerance {tolerance:.0e})")
    return largest, problems


def verify_release(
    staged: Path, repo_id: str, *, reference: Mapping[str, Any], image: Path, tolerance: float
) -> VerificationReport:
    """Load `staged` as `repo_id` from a temporary Hub cache in a fresh process and compare with `reference`
    (`{mode: result}` from the source model on `image`). Raises [`ReleaseVerificationError`] on any mismatch."""
    modes = list(reference)
    with tempfile.TemporaryDirectory(prefix="retinascan-verify-") as scratch:
        cache = Path(scratch) / "hub"
        materialize_snapshot(folder_files(Path(staged)), cache, repo_id)
        answer = load_in_fresh_process(cache, repo_id, image, modes)
    largest, problems = compare_results(answer["results"], reference, tolerance)
    if answer["imported_retinascan_hf"]:
        problems.append("the fresh process imported retinascan_hf: the release is not self-contained")
    report = VerificationReport(modes, answer["results"], dict(reference), largest, problems)
    if problems:
        raise ReleaseVerificationError(
            "The staged release grades differently from its source:\n- " + "\n- ".join(problems)
        )
    return report


__all__ = [
    "FAKE_COMMIT",
    "ReleaseVerificationError",
    "VerificationReport",
    "check_label",
    "compare_results",
    "folder_files",
    "load_in_fresh_process",
    "materialize_snapshot",
    "verify_release",
]
