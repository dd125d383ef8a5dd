"""Issue 7, item 7: a tampered checkpoint, cache, model folder or bank never runs code.

Accelerate's `load_state` read `custom_checkpoint_0.pkl` with `weights_only=False`, so a crafted file ran
`os.system(...)` on `--resume`. Every artefact we read is now safetensors or JSON. Each test plants a pickle
whose unpickling would create a marker folder, in every place a pickle could be read, and checks that the load
fails with an error naming the file and that the marker never appears.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from training_support import grade_structured_split, small_config

from retinascan_hf import FeatureBank, RetinaScanModel
from retinascan_hf.atomic_io import write_manifest
from retinascan_hf.tiny_clip import random_retinascan
from retinascan_hf.training import RetinaScanTrainer, make_accelerator
from retinascan_hf.training.augment import FundusAugmentation
from retinascan_hf.training.checkpointing import CHECKPOINT_KIND, CheckpointError, list_checkpoints, load_best_weights
from retinascan_hf.training.data import FundusViews
from retinascan_hf.training.feature_cache import FeatureCache, augmentation_key, backbone_fingerprint, cached_features
from retinascan_hf.training.state_files import StateFileError, load_state, save_state


class Payload:
    """Unpickling this creates `marker`: the stand-in for `os.system(...)`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def raw_pickle(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def torch_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)
    return buffer.getvalue()


PICKLERS = {"pickle": raw_pickle, "torch.save": torch_pickle}


@pytest.fixture(params=sorted(PICKLERS))
def pickler(request) -> Callable[[Path], bytes]:
    return PICKLERS[request.param]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def test_the_payload_is_live(tmp_path: Path, pickler) -> None:
    """Without the guards, loading these bytes runs code: what every test below must prevent."""
    marker = tmp_path / "live"
    data = pickler(marker)
    if data.startswith(b"PK"):
        torch.load(io.BytesIO(data), weights_only=False)
    else:
        pickle.loads(data)
    assert marker.is_dir()


# ---------------------------------------------------------------- training checkpoints


def trainer(output_dir: Path, **overrides) -> RetinaScanTrainer:
    config = small_config(output_dir, **{"num_epochs": 1, **overrides})
    set_seed(config.seed)
    model, _ = random_retinascan(seed=0)
    train = grade_structured_split(8, seed=1, n_views=config.n_views, name="train")
    validation = grade_structured_split(4, seed=2, name="validation")
    return RetinaScanTrainer(model, config, train, validation, make_accelerator(config))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """An output folder holding one clean checkpoint; tests copy it before tampering."""
    output_dir = tmp_path_factory.mktemp("trained")
    trainer(output_dir).train()
    return output_dir


@pytest.fixture
def checkpoint_copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def resume(output_dir: Path) -> None:
    trainer(output_dir, resume=True, num_epochs=2).train()


ACCELERATE_PICKLES = [
    "custom_checkpoint_0.pkl",
    "custom_checkpoint_1.pkl",
    "random_states_0.pkl",
    "optimizer.bin",
    "scheduler.bin",
    "scaler.pt",
    "pytorch_model.bin",
]


@pytest.mark.parametrize("name", ACCELERATE_PICKLES)
def test_a_pickle_planted_in_a_checkpoint_is_refused_by_name(checkpoint_copy, marker, pickler, name) -> None:
    checkpoint = list_checkpoints(checkpoint_copy / "checkpoints")[-1]
    (checkpoint / name).write_bytes(pickler(marker))
    with pytest.raises(CheckpointError, match=rf"holds files this tool did not write: {name}.*never loaded"):
        resume(checkpoint_copy)
    assert not marker.exists()


def test_a_checkpoint_in_accelerates_pickle_format_is_refused(checkpoint_copy, marker, pickler) -> None:
    checkpoint = list_checkpoints(checkpoint_copy / "checkpoints")[-1]
    for path in checkpoint.iterdir():
        path.unlink()
    for name in ACCELERATE_PICKLES[:-1]:
        (checkpoint / name).write_bytes(pickler(marker))
    with pytest.raises(CheckpointError, match=r"holds no .* older version"):
        resume(checkpoint_copy)
    assert not marker.exists()


LISTED_FILES = [
    "model.safetensors",
    "optimizer.json",
    "optimizer.safetensors",
    "scheduler.json",
    "custom_0.json",
    "custom_1.json",
    "rng_state_0.json",
    "rng_state_0.safetensors",
]


@pytest.mark.parametrize("name", LISTED_FILES)
def test_a_listed_file_replaced_by_a_pickle_fails_to_load_without_running_it(
    checkpoint_copy, marker, pickler, name
) -> None:
    """An attacker who also rewrites the manifest gets past the listing, and still only reaches parsers."""
    checkpoint = list_checkpoints(checkpoint_copy / "checkpoints")[-1]
    (checkpoint / name).write_bytes(pickler(marker))
    write_manifest(checkpoint, CHECKPOINT_KIND)
    with pytest.raises(CheckpointError, match=rf"{checkpoint.name}.*{name.split('.')[0]}"):
        resume(checkpoint_copy)
    assert not marker.exists()


def test_resuming_an_untampered_checkpoint_still_works(checkpoint_copy) -> None:
    resumed = trainer(checkpoint_copy, resume=True, num_epochs=2)
    resumed.train()
    assert resumed.progress.epoch == 2


def test_best_weights_replaced_by_a_pickle_fail_to_load_without_running_it(checkpoint_copy, marker, pickler) -> None:
    (checkpoint_copy / "best" / "trainable.safetensors").write_bytes(pickler(marker))
    model, _ = random_retinascan(seed=0)
    with pytest.raises(CheckpointError, match=r"trainable\.safetensors is not a readable safetensors file"):
        load_best_weights(model, checkpoint_copy / "best")
    assert not marker.exists()


# ---------------------------------------------------------------- feature cache, model folder, feature bank


def test_a_feature_cache_shard_replaced_by_a_pickle_fails_without_running_it(tmp_path, marker, pickler) -> None:
    from retinascan_hf.synthetic import synthetic_corpus

    model, processor = random_retinascan(seed=0)
    augmentation = FundusAugmentation()
    cache = FeatureCache(tmp_path / "cache", backbone_fingerprint(model, processor), augmentation_key(augmentation, 0))
    views = FundusViews(synthetic_corpus({"train": (1,) * 5}, size=48)["train"], processor, augmentation, seed=0)
    accelerator = Accelerator(cpu=True)
    cached_features(model, views, "train", 1, cache=cache, accelerator=accelerator, batch_size=8, progress=False)
    cache.shard_path("train", 0).write_bytes(pickler(marker))
    with pytest.raises(Exception, match=r"(?i)header|deserializ|safetensor"):
        cached_features(model, views, "train", 1, cache=cache, accelerator=accelerator, batch_size=8, progress=False)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's weights-only unpickler, refusing it
@pytest.mark.parametrize("keep_safetensors", [True, False], ids=["beside-safetensors", "alone"])
def test_a_pickled_model_checkpoint_never_runs(model_dir, tmp_path, marker, pickler, keep_safetensors) -> None:
    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    if not keep_safetensors:
        (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickler(marker))
    if keep_safetensors:
        assert isinstance(RetinaScanModel.from_pretrained(folder), RetinaScanModel)  # the .bin is ignored
    else:
        with pytest.raises(Exception, match=r"(?i)weights.only|unpickl|pickle"):
            RetinaScanModel.from_pretrained(folder)
    assert not marker.exists()


def test_a_feature_bank_replaced_by_a_pickle_fails_without_running_it(model_dir, tmp_path, marker, pickler) -> None:
    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    (folder / "feature_bank.safetensors").write_bytes(pickler(marker))
    with pytest.raises(Exception, match=r"(?i)header|deserializ|safetensor"):
        FeatureBank.from_pretrained(folder)
    assert not marker.exists()


# ---------------------------------------------------------------- the pickle-free state format itself

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
tensors = st.builds(
    lambda shape, seed: torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)),
    st.lists(st.integers(0, 3), max_size=2),
    st.integers(0, 100),
)
states = st.recursive(
    scalars | tensors,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=3)
    ),
    max_leaves=12,
)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    return type(a) is type(b) and a == b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=states)
def test_any_state_dict_round_trips_through_json_and_safetensors(tmp_path_factory, state) -> None:
    folder = tmp_path_factory.mktemp("state")
    written = save_state(state, folder, "piece")
    assert sorted(path.name for path in folder.iterdir()) == sorted(written)
    assert same(state, load_state(folder, "piece"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=200) | st.recursive(scalars, lambda c: st.lists(c) | st.dictionaries(st.text(), c)))
def test_garbage_state_files_fail_with_the_file_named(tmp_path_factory, garbage) -> None:
    folder = tmp_path_factory.mktemp("state")
    save_state({"weights": torch.ones(2)}, folder, "piece")
    if isinstance(garbage, bytes):
        (folder / "piece.json").write_bytes(garbage or b"[" * 100_000)  # empty: nesting too deep to parse
    else:
        payload = {"format": "retinascan-state", "version": 1, "tensors": True, "state": garbage}
        (folder / "piece.json").write_text(json.dumps(payload))
    try:
        load_state(folder, "piece")
    except StateFileError as error:
        assert "piece" in str(error)
