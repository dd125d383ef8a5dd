"""Atomic, owned writes: readers see the old artefact or the complete new one, and we only delete what we wrote.

Long jobs (corpus builds, training exports, benchmarks) get killed; everything they publish goes through a
temporary file or folder beside the target and a final rename on the same file system.

Every folder published here carries a manifest (`MANIFEST_NAME`): the tool's identity, the kind of artefact
and the list of files written (with their sizes). A folder is replaced or deleted only if it holds exactly
that: all listed files, nothing else. A stray `thesis.docx` beside a `build_report.json`, a folder from an
older version without a manifest, or a file edited since, all make us refuse instead of deleting.

Replacing a folder takes two renames (old -> a retired `.<name>.<random>.old/` holder, staging -> target). A
kill between them leaves the target missing; a kill during the build leaves a `.<name>.<random>.tmp/` staging
folder. [`recover_directory`] (run by every writer before it starts, and by our loaders before they read)
puts a retired folder back, or removes it once superseded, and removes dead staging folders. It recognises
them by our manifest inside, and skips any that a live process holds: writers keep an advisory `flock` on the
folders they are working in, so a concurrent run's folders are never taken for leftovers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, so leftovers are never taken for dead (see `_is_held`)
    fcntl = None

logger = logging.get_logger(__name__)

TOOL = "retinascan"
MANIFEST_NAME = ".retinascan-manifest.json"
_MANIFEST_VERSION = 1
_STAGING, _RETIRED = ".tmp", ".old"
# An empty, unlocked staging or retired folder younger than this may belong to a writer between `mkdtemp` and
# taking its lock, so it is left alone; older ones are leftovers of a kill at that instant.
_EMPTY_GRACE_SECONDS = 60.0


class NotOwnedError(FileExistsError):
    """A folder we would replace or delete holds something this tool did not write (or lacks a file it did)."""


@dataclass(frozen=True)
class Manifest:
    """What a folder's manifest says: which writer made it and what it wrote.

    Attributes:
        kind: the artefact kind (the writer's marker file, e.g. `build_report.json` for a corpus).
        files: relative POSIX path -> size in bytes of every file written; `None` while still staging.
        directories: relative POSIX paths of the sub-folders written.
        nested: relative POSIX paths of artefacts of ours published inside this one afterwards, each with its own
            manifest (an ONNX export in a model folder, see [`record_nested`]): they go with it when it is replaced.
    """

    kind: str
    files: dict[str, int] | None
    directories: tuple[str, ...] = ()
    nested: tuple[str, ...] = ()


def _contents(folder: Path, skip: tuple[str, ...] = ()) -> tuple[dict[str, int], list[str]]:
    """Sizes of every non-folder entry under `folder` (symlinks not followed) and its sub-folders, except the
    manifest itself and the sub-folders `skip` names (relative POSIX paths)."""
    files: dict[str, int] = {}
    directories: list[str] = []
    for current, subfolders, names in os.walk(folder):
        relative = Path(current).relative_to(folder)
        subfolders[:] = [name for name in subfolders if (relative / name).as_posix() not in skip]
        directories.extend((relative / name).as_posix() for name in subfolders)
        for name in names:
            path = Path(current) / name
            if path == folder / MANIFEST_NAME:
                continue
            files[(relative / name).as_posix()] = path.lstat().st_size
    return files, sorted(directories)


def write_manifest(folder: Path, kind: str, *, complete: bool = True) -> None:
    """Record `folder`'s current content (or, with `complete=False`, only that we are staging it)."""
    payload: dict[str, object] = {"tool": TOOL, "version": _MANIFEST_VERSION, "kind": kind, "files": None}
    if complete:
        files, directories = _contents(folder)
        payload.update(files=files, directories=directories)
    temporary = folder / f"{MANIFEST_NAME}.writing"
    temporary.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, folder / MANIFEST_NAME)


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of `folder`, or `None` when it has none, or one that is not ours or not readable."""
    path = folder / MANIFEST_NAME
    try:
        if not path.is_file() or path.stat().st_size > 64 * 1024 * 1024:
            return None
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("tool") != TOOL or not isinstance(payload.get("kind"), str):
            return None
        files = payload.get("files")
        if files is not None:
            files = {str(name): int(size) for name, size in dict(files).items()}
        directories = tuple(str(name) for name in payload.get("directories") or ())
        return Manifest(payload["kind"], files, directories, tuple(str(name) for name in payload.get("nested") or ()))
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return None


def _present_nested(folder: Path, manifest: Manifest) -> tuple[str, ...]:
    """The nested artefacts `manifest` lists that are still there (one deleted since is no loss to anyone)."""
    return tuple(name for name in manifest.nested if (folder / name).exists() or (folder / name).is_symlink())


def _nested_problem(folder: Path, name: str) -> str | None:
    """Why `folder / name` is not exactly a complete artefact of ours (of any kind), or `None` when it is."""
    nested = folder / name
    manifest = read_manifest(nested) if nested.is_dir() and not nested.is_symlink() else None
    if manifest is None:
        return f"its {name}/ holds no {MANIFEST_NAME} written by {TOOL}"
    problem = ownership_problem(nested, manifest.kind)
    return None if problem is None else f"its {name}/ {problem.removeprefix('it ').removeprefix('its ')}"


def ownership_problem(folder: Path, kind: str) -> str | None:
    """Why `folder` is not exactly a complete `kind` artefact written by this tool, or `None` when it is."""
    manifest = read_manifest(folder)
    if manifest is None:
        return f"it holds no {MANIFEST_NAME} written by {TOOL}"
    if manifest.kind != kind:
        return f"its manifest says it holds a {manifest.kind!r} artefact, not {kind!r}"
    return _content_problem(folder, manifest)


def _content_problem(folder: Path, manifest: Manifest) -> str | None:
    """Why `folder` does not hold exactly what `manifest` lists (nested artefacts: exactly theirs), or `None`."""
    if manifest.files is None:
        return "its manifest says it was never finished"
    nested = _present_nested(folder, manifest)
    for name in nested:
        problem = _nested_problem(folder, name)
        if problem:
            return problem
    files, directories = _contents(folder, skip=nested)
    directories = [name for name in directories if name not in nested]
    extra = sorted(set(files) - set(manifest.files)) + sorted(set(directories) - set(manifest.directories))
    missing = sorted(set(manifest.files) - set(files))
    changed = sorted(name for name in set(files) & set(manifest.files) if files[name] != manifest.files[name])
    for label, names in (("files this tool did not write", extra), ("missing", missing), ("changed", changed)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            return f"it holds {label}: {shown}" if label != "missing" else f"files it wrote are missing: {shown}"
    return None


def check_replaceable(target: Path, marker: str) -> None:
    """Refuse to replace `target` unless it is absent, an empty folder, or exactly a `marker` artefact of ours.

    Replacing deletes the old folder, so only what an earlier run of the same writer made, unchanged, may go;
    a typo such as `--out .` must never wipe a working directory.

    Raises:
        NotOwnedError: naming the folder and what makes it not ours.
    """
    if target.is_symlink():
        raise NotOwnedError(f"{target} is a symbolic link; refusing to replace it. Choose a new or empty folder.")
    if target.exists() and not target.is_dir():
        raise NotOwnedError(f"{target} is a file; refusing to replace it with a folder.")
    if not target.is_dir() or not any(target.iterdir()):
        return
    problem = ownership_problem(target, marker)
    if problem:
        raise NotOwnedError(
            f"Refusing to replace {target}: {problem}. Only a folder holding exactly what {TOOL} wrote there is "
            "replaced, so that none of your files is deleted: choose a new or empty folder, or move this one away."
        )


@contextmanager
def _held(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` (released when the block ends or the process dies)."""
    if fcntl is None:
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _is_held(folder: Path) -> bool:
    """Whether a live process holds `folder`'s lock (a folder that vanished meanwhile counts as held).

    Without `fcntl` nothing can tell a dead writer's folder from a live one's, so every folder counts as held.
    """
    if fcntl is None:
        return True
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)
    return False


def _remove_staging(folder: Path) -> None:
    """Delete a staging folder of ours, its manifest last, so a kill midway leaves it recognisable."""
    for child in folder.iterdir():
        if child.name == MANIFEST_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    folder.rmdir()


def discard_staging(folder: Path) -> None:
    """Delete a staging folder that one of our writers left (it holds our manifest, finished or not).

    Raises:
        NotOwnedError: when `folder` is not empty and holds no manifest of ours.
    """
    if not folder.exists():
        return
    if read_manifest(folder) is None and any(folder.iterdir()):
        raise NotOwnedError(f"Refusing to delete {folder}: it holds no {MANIFEST_NAME} of {TOOL}.")
    _remove_staging(folder)


def remove_written(folder: Path) -> bool:
    """Delete what `folder`'s manifest lists, then the manifest and the folder if nothing else is left.

    Returns whether the folder is gone; anything the manifest does not list stays, with a warning.
    """
    manifest = read_manifest(folder)
    if manifest is None or manifest.files is None:
        logger.warning(f"Not deleting {folder}: it holds no complete manifest of {TOOL}.")
        return False
    for name in _present_nested(folder, manifest):
        if _nested_problem(folder, name) is None:
            remove_written(folder / name)
    for name in manifest.files:
        (folder / name).unlink(missing_ok=True)
    for name in sorted(manifest.directories, key=lambda entry: entry.count("/"), reverse=True):
        subfolder = folder / name
        if subfolder.is_dir() and not subfolder.is_symlink() and not any(subfolder.iterdir()):
            subfolder.rmdir()
    remaining = [path.name for path in folder.iterdir() if path.name != MANIFEST_NAME]
    if remaining:
        logger.warning(f"Left {folder} in place: it holds files {TOOL} did not write ({', '.join(remaining[:5])}).")
        return False
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    folder.rmdir()
    return True


def record_nested(parent: str | os.PathLike, child: str | os.PathLike) -> bool:
    """Record in `parent`'s manifest that `child`, a complete artefact of ours just published inside it, belongs
    to it: `parent` stays replaceable, and `child` goes with it (an ONNX export goes with the weights it was made
    from). Records nothing, and returns `False`, when `parent` is not exactly an artefact of ours apart from
    `child`: then nothing of it may be replaced anyway.
    """
    parent, child = Path(parent).absolute(), Path(child).absolute()
    name = child.relative_to(parent).as_posix()
    manifest = read_manifest(parent)
    if manifest is None or manifest.files is None:
        return False
    nested = tuple(sorted({*manifest.nested, name}))
    if _content_problem(parent, Manifest(manifest.kind, manifest.files, manifest.directories, nested)) is not None:
        return False
    payload = json.loads((parent / MANIFEST_NAME).read_text(encoding="utf-8"))
    payload["nested"] = list(nested)
    temporary = parent / f"{MANIFEST_NAME}.writing"
    temporary.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, parent / MANIFEST_NAME)
    return True


def _is_young_and_empty(folder: Path) -> bool:
    return not any(folder.iterdir()) and time.time() - folder.stat().st_mtime < _EMPTY_GRACE_SECONDS


def _leftovers(target: Path, suffix: str) -> list[Path]:
    prefix = f".{target.name}."
    if not target.parent.is_dir():
        return []
    return sorted(
        path
        for path in target.parent.iterdir()
        if path.name.startswith(prefix) and path.name.endswith(suffix) and path.is_dir() and not path.is_symlink()
    )


def recover_directory(target: str | os.PathLike) -> None:
    """Finish or undo what a killed writer left around `target` (see the module docstring).

    A retired copy whose swap was interrupted is renamed back when `target` is missing and the copy is intact;
    one superseded by a complete `target` is deleted. Staging folders of dead writers are deleted. Anything
    without our manifest, or held by a live writer, is left alone.
    """
    target = Path(target).absolute()
    for holder in _leftovers(target, _RETIRED):
        if _is_held(holder) or _is_young_and_empty(holder):
            continue
        retired = holder / target.name
        others = [path.name for path in holder.iterdir() if path.name != target.name]
        manifest = read_manifest(retired) if retired.is_dir() else None
        if others or (retired.exists() and manifest is None):
            logger.warning(f"Leaving {holder} alone: it does not look like a folder retired by {TOOL}.")
        elif not retired.exists():
            holder.rmdir()
        elif not target.exists() and manifest.files is not None and not ownership_problem(retired, manifest.kind):
            retired.rename(target)
            holder.rmdir()
            logger.warning(f"Restored {target} from {holder}: a replacement of it was interrupted.")
        elif target.exists() and remove_written(retired):
            holder.rmdir()
        elif not target.exists():
            logger.warning(f"{target} is missing and its retired copy {retired} is incomplete; left for inspection.")
    for staging in _leftovers(target, _STAGING):
        if _is_held(staging) or _is_young_and_empty(staging):
            continue
        if read_manifest(staging) is not None or not any(staging.iterdir()):
            _remove_staging(staging)
            logger.info(f"Removed {staging}, left by an interrupted write of {target}.")
        else:
            logger.warning(f"Leaving {staging} alone: it holds no manifest of {TOOL}.")


@contextmanager
def _locked_folder(target: Path, suffix: str) -> Iterator[Path]:
    """A fresh `.<name>.<random><suffix>` folder beside `target`, locked while the block runs."""
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    with _held(folder):
        yield folder


@contextmanager
def atomic_directory(target: Path, *, marker: str) -> Iterator[Path]:
    """Yield an empty staging folder beside `target` that replaces `target` on success.

    Staging on the same file system makes the final step a rename, so an interrupted build never leaves a
    half-written folder at `target`; on error the staging folder is removed and an existing `target` is left
    untouched. The staged content must write `marker`; a manifest listing everything it wrote is added. An
    existing `target` is replaced (moved aside, then deleted), not merged, and only if
    [`check_replaceable`] allows it, checked before the work and again just before the swap.
    """
    target = Path(target).absolute()
    recover_directory(target)
    check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked_folder(target, _STAGING) as staging:
        try:
            write_manifest(staging, marker, complete=False)  # marks it as ours for `recover_directory`
            yield staging
            if not (staging / marker).exists():
                raise RuntimeError(f"Staged folder for {target} lacks {marker}; nothing was replaced.")
            write_manifest(staging, marker)
            staging.chmod(0o755)  # mkdtemp's 0700 would make a shared corpus private to its builder
            if target.exists():
                check_replaceable(target, marker)
                _swap(target, staging)
            else:
                os.rename(staging, target)
        finally:
            if staging.exists():
                _remove_staging(staging)


def _swap(target: Path, staging: Path) -> None:
    """Replace `target` by `staging`: retire `target` into a locked holder, rename, delete the retired copy.

    A kill between the two renames leaves `target` missing and the intact old folder in the holder, which
    [`recover_directory`] renames back.
    """
    if not any(target.iterdir()):  # rename(2) replaces an empty folder in one step
        os.rename(staging, target)
        return
    with _locked_folder(target, _RETIRED) as holder:
        os.rename(target, holder / target.name)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(holder / target.name, target)
            holder.rmdir()
            raise
        if remove_written(holder / target.name):
            holder.rmdir()


def write_json_atomically(path: str | os.PathLike, payload: dict) -> Path:
    """Write `payload` as JSON via a temp file and a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(target.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, target)
    return target


__all__ = [
    "MANIFEST_NAME",
    "TOOL",
    "Manifest",
    "NotOwnedError",
    "atomic_directory",
    "check_replaceable",
    "discard_staging",
    "ownership_problem",
    "read_manifest",
    "record_nested",
    "recover_directory",
    "remove_written",
    "write_json_atomically",
    "write_manifest",
]
