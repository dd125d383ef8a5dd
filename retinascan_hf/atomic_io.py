"""Atomic writes: readers see either the old artefact or the complete new one, never half of it.

Long jobs (corpus builds, training exports, benchmarks) get killed; everything they publish goes through
a temporary file or folder beside the target and a final rename on the same file system.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_replaceable(target: Path, marker: str) -> None:
    """Refuse to replace a non-empty ``target`` that lacks ``marker``: it is not our artefact.

    Replacing deletes the old folder, so only a folder that an earlier run of the same writer made (it
    holds ``marker``, e.g. ``dataset_dict.json`` for a corpus) may be replaced; a typo such as
    ``--out .`` must never wipe a working directory.
    """
    if target.is_file():
        raise FileExistsError(f"{target} is a file; refusing to replace it with a folder.")
    if target.is_dir() and any(target.iterdir()) and not (target / marker).exists():
        raise FileExistsError(
            f"Refusing to replace {target}: it is not empty and holds no {marker}, so it was not written by "
            "this tool. Choose a new or empty folder."
        )


@contextmanager
def atomic_directory(target: Path, *, marker: str) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target`` that replaces ``target`` on success.

    Staging on the same file system makes the final step a rename, so an interrupted build never
    leaves a half-written folder at ``target``; on error the staging folder is removed and an
    existing ``target`` is left untouched. An existing ``target`` is moved aside, not merged, and only
    if it holds ``marker`` (see [`check_replaceable`]); the staged content must write ``marker`` too.
    """
    target = target.absolute()
    check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        if not (staging / marker).exists():
            raise RuntimeError(f"Staged folder for {target} lacks {marker}; nothing was replaced.")
        staging.chmod(0o755)  # mkdtemp's 0700 would make a shared corpus private to its builder
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            target.rename(retired / target.name)
            staging.rename(target)
            shutil.rmtree(retired)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json_atomically(path: str | os.PathLike, payload: dict) -> Path:
    """Write `payload` as JSON via a temp file and a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(target.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, target)
    return target
