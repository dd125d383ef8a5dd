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


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target`` that replaces ``target`` on success.

    Staging on the same file system makes the final step a rename, so an interrupted build never
    leaves a half-written folder at ``target``; on error the staging folder is removed and an
    existing ``target`` is left untouched. An existing ``target`` is moved aside, not merged.
    """
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
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
