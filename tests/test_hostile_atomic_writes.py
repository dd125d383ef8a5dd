"""Issue 7, item 6: a folder is replaced only if it holds exactly what we wrote; a killed swap is recovered.

Kills are real: a forked child process runs the write and calls `os._exit` at the chosen point (no `finally`
block, no cleanup), then the parent checks what the next run, or a read through our loaders, makes of it.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retinascan_hf import atomic_io
from retinascan_hf.atomic_io import MANIFEST_NAME, NotOwnedError, atomic_directory, recover_directory

MARKER = "report.json"
OLD = {MARKER: "old", "data/shard-0.arrow": "old rows", "data/state.json": "{}"}
NEW = {MARKER: "new", "data/shard-0.arrow": "new rows, longer"}


def write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def read_files(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): path.read_text()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def publish(target: Path, files: dict[str, str]) -> None:
    with atomic_directory(target, marker=MARKER) as staging:
        write_files(staging, files)


def leftovers(target: Path) -> list[str]:
    return sorted(path.name for path in target.parent.iterdir() if path.name.startswith(f".{target.name}."))


@pytest.fixture
def old_target(tmp_path: Path) -> Path:
    target = tmp_path / "corpus"
    publish(target, OLD)
    return target


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leftovers of a kill a moment ago count as old (in real use an empty one must be a minute old)."""
    monkeypatch.setattr(atomic_io, "_EMPTY_GRACE_SECONDS", 0.0)


# ---------------------------------------------------------------- what may be replaced


def test_a_users_file_beside_our_marker_is_never_deleted(tmp_path: Path) -> None:
    target = tmp_path / "out"
    write_files(target, {MARKER: "{}", "thesis.docx": "three years of work"})
    with pytest.raises(NotOwnedError, match=f"holds no {MANIFEST_NAME}"):
        publish(target, NEW)
    assert read_files(target) == {MARKER: "{}", "thesis.docx": "three years of work"}
    assert leftovers(target) == []


MODIFICATIONS = {
    "added file": lambda folder: (folder / "thesis.docx").write_text("mine"),
    "added nested file": lambda folder: (folder / "data" / "notes.txt").write_text("mine"),
    "added folder": lambda folder: (folder / "photos").mkdir(),
    "removed file": lambda folder: (folder / "data" / "state.json").unlink(),
    "edited file": lambda folder: (folder / MARKER).write_text("edited by hand, longer"),
    "manifest deleted": lambda folder: (folder / MANIFEST_NAME).unlink(),
    "manifest garbage": lambda folder: (folder / MANIFEST_NAME).write_bytes(b"\x80\x00not json"),
    "manifest nested too deep": lambda folder: (folder / MANIFEST_NAME).write_text("[" * 100_000),
    "manifest of another tool": lambda folder: (folder / MANIFEST_NAME).write_text('{"tool": "other", "kind": "x"}'),
    "manifest of another kind": lambda folder: atomic_io.write_manifest(folder, "config.json"),
    "manifest unfinished": lambda folder: atomic_io.write_manifest(folder, MARKER, complete=False),
}


@pytest.mark.parametrize("modification", sorted(MODIFICATIONS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    written=st.dictionaries(
        st.lists(st.sampled_from(["a", "b", "sub", "x.bin"]), min_size=1, max_size=3).map("/".join),
        st.text(max_size=20),
        max_size=4,
    ),
)
def test_any_change_to_a_folder_we_wrote_makes_us_refuse_to_replace_it(
    tmp_path_factory: pytest.TempPathFactory, written: dict[str, str], modification: str
) -> None:
    folders = {name.rsplit("/", 1)[0] for name in written if "/" in name}
    written = {name: text for name, text in written.items() if not any(f"{name}/" in f"{f}/" for f in folders)}
    target = tmp_path_factory.mktemp("case") / "out"
    publish(target, {**OLD, **written})
    MODIFICATIONS[modification](target)
    before = {path.relative_to(target): path.read_bytes() for path in target.rglob("*") if path.is_file()}
    with pytest.raises(NotOwnedError, match="Refusing to replace"):
        publish(target, NEW)
    assert {path.relative_to(target): path.read_bytes() for path in target.rglob("*") if path.is_file()} == before
    assert leftovers(target) == []


def test_an_unchanged_folder_we_wrote_is_replaced_and_files_and_symlinks_are_refused(old_target: Path) -> None:
    publish(old_target, NEW)
    assert read_files(old_target) == NEW
    assert leftovers(old_target) == []
    link = old_target.parent / "link"
    link.symlink_to(old_target)
    with pytest.raises(NotOwnedError, match="symbolic link"):
        publish(link, NEW)
    plain = old_target.parent / "plain.txt"
    plain.write_text("x")
    with pytest.raises(NotOwnedError, match="is a file"):
        publish(plain, NEW)
    assert plain.read_text() == "x" and read_files(old_target) == NEW


# ---------------------------------------------------------------- kills, and what the next run makes of them


def _killed_write(target: Path, point: str) -> None:
    """Child process: replace `target` with NEW and die (`os._exit`) at `point`."""
    renames = {"before_first_rename": 1, "between_renames": 2}.get(point)
    real_rename, calls = os.rename, []

    def rename(source, destination):
        calls.append(1)
        if len(calls) == renames:
            os._exit(0)
        real_rename(source, destination)

    os.rename = rename
    atomic_io.remove_written = lambda folder: os._exit(0)  # after both renames, before the old copy is gone
    with atomic_directory(target, marker=MARKER) as staging:
        write_files(staging, NEW)
        if point == "while_staging":
            os._exit(0)
    os._exit(3)  # never reached: every point kills


def kill_at(target: Path, point: str) -> None:
    child = multiprocessing.get_context("fork").Process(target=_killed_write, args=(target, point))
    child.start()
    child.join(30)
    assert child.exitcode == 0


@pytest.mark.parametrize(
    ("point", "survivor"),
    [("while_staging", OLD), ("before_first_rename", OLD), ("between_renames", OLD), ("after_swap", NEW)],
)
def test_a_kill_at_any_point_of_the_swap_is_recovered_by_the_next_run(
    old_target: Path, no_grace: None, point: str, survivor: dict[str, str]
) -> None:
    kill_at(old_target, point)
    assert leftovers(old_target), "the kill left something behind"
    if point == "between_renames":
        assert not old_target.exists()  # the state the issue describes: --out missing, old corpus hidden
    recover_directory(old_target)
    assert read_files(old_target) == survivor
    assert leftovers(old_target) == []
    publish(old_target, {**NEW, MARKER: "third"})  # and the folder is ours again, replaceable as ever
    assert read_files(old_target)[MARKER] == "third"


def test_a_read_through_our_loaders_restores_a_corpus_hidden_by_a_killed_swap(tmp_path: Path) -> None:
    from retinascan_hf.synthetic import save_synthetic_corpus
    from retinascan_hf.training.run import load_corpus

    target = tmp_path / "corpus"
    save_synthetic_corpus(target, {"train": (1,) * 5, "validation": (1,) * 5, "test": (1,) * 5}, size=32)
    child = multiprocessing.get_context("fork").Process(target=_kill_between_renames, args=(target,))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and not target.exists()
    assert load_corpus(str(target))["train"].num_rows == 5
    assert leftovers(target) == []


def _kill_between_renames(target: Path) -> None:
    from retinascan_hf.synthetic import save_synthetic_corpus

    real_rename, calls = os.rename, []

    def rename(source, destination):
        calls.append(1)
        if len(calls) == 2:
            os._exit(0)
        real_rename(source, destination)

    os.rename = rename
    save_synthetic_corpus(target, {"train": (2,) * 5, "validation": (1,) * 5, "test": (1,) * 5}, size=32, seed=1)


def test_a_failing_second_rename_puts_the_old_folder_back(old_target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_rename, calls = os.rename, []

    def rename(source, destination):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk unplugged")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk unplugged"):
        publish(old_target, NEW)
    assert read_files(old_target) == OLD
    assert leftovers(old_target) == []


# ---------------------------------------------------------------- leftovers that are not ours, or not dead


def test_leftovers_we_did_not_make_or_a_live_writer_holds_are_left_alone(old_target: Path, no_grace: None) -> None:
    foreign = old_target.parent / f".{old_target.name}.mine.tmp"
    write_files(foreign, {"draft.txt": "not yours"})
    reader, writer = multiprocessing.get_context("fork").Pipe(duplex=False)
    release, proceed = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_slow_write, args=(old_target, writer, release))
    child.start()
    try:
        assert reader.poll(30)
        live_staging = Path(reader.recv())
        recover_directory(old_target)
        assert live_staging.is_dir(), "a live writer's staging folder was taken for a leftover"
        assert read_files(foreign) == {"draft.txt": "not yours"}
    finally:
        proceed.send("go")
        child.join(30)
    assert child.exitcode == 0
    assert read_files(old_target) == NEW
    assert leftovers(old_target) == [foreign.name]


def _slow_write(target: Path, report, release) -> None:
    with atomic_directory(target, marker=MARKER) as staging:
        write_files(staging, NEW)
        report.send(str(staging))
        release.recv()


# ---------------------------------------------------------------- artefacts published inside one of ours


def publish_nested(target: Path, files: dict[str, str], name: str = "onnx") -> Path:
    """Publish a second artefact inside `target` (as `retinascan export-onnx` does in a model folder)."""
    with atomic_directory(target / name, marker="export_config.json") as staging:
        write_files(staging, files)
    return target / name


def test_an_artefact_recorded_inside_ours_goes_with_it_and_nothing_else_is_deleted(old_target: Path) -> None:
    """Before: an ONNX export in a model folder made the folder 'not ours', so the next training run refused to
    write its model."""
    nested = publish_nested(old_target, {"export_config.json": "{}", "model.onnx": "graph"})
    assert atomic_io.record_nested(old_target, nested)
    publish(old_target, NEW)
    assert read_files(old_target) == NEW and leftovers(old_target) == []


@pytest.mark.parametrize(
    "change",
    ["user file in the nested folder", "nested file edited", "nested manifest deleted", "nested folder not recorded"],
)
def test_a_nested_artefact_changed_by_hand_keeps_the_folder_from_being_replaced(old_target: Path, change: str) -> None:
    nested = publish_nested(old_target, {"export_config.json": "{}", "model.onnx": "graph"})
    if change != "nested folder not recorded":
        assert atomic_io.record_nested(old_target, nested)
    if change == "user file in the nested folder":
        (nested / "notes.txt").write_text("mine")
    elif change == "nested file edited":
        (nested / "model.onnx").write_text("a graph edited by hand")
    elif change == "nested manifest deleted":
        (nested / MANIFEST_NAME).unlink()
    before = read_files(old_target)
    with pytest.raises(NotOwnedError, match="Refusing to replace"):
        publish(old_target, NEW)
    assert read_files(old_target) == before


def test_nothing_is_recorded_in_a_folder_that_is_not_exactly_ours(old_target: Path) -> None:
    (old_target / "thesis.docx").write_text("mine")
    nested = publish_nested(old_target, {"export_config.json": "{}"})
    assert not atomic_io.record_nested(old_target, nested)
    assert atomic_io.read_manifest(old_target).nested == ()
