"""Issue 7, item 5: the same seed and data train the same weights, whatever the feature cache held.

Two runs used to differ (max weight difference 0.038) when one filled the cache and the other reused it: each
`DataLoader` iteration over images drew its worker seed from the global torch RNG, so computing features
shifted every later dropout mask. Features computed in batches of other shapes also differed by ~1e-6.
"""

from __future__ import annotations

from functools import partial

import datasets
import pytest
import torch
from accelerate import Accelerator
from training_support import save_small_corpus, small_config

from retinascan_hf import RetinaScanImageProcessor, RetinaScanModel
from retinascan_hf.tiny_clip import random_retinascan, trainable_tiny_clip_config
from retinascan_hf.training import RetinaScanTrainer, backbone_fingerprint, run_training
from retinascan_hf.training import run as run_module
from retinascan_hf.training.augment import FundusAugmentation
from retinascan_hf.training.data import FundusViews, compute_features
from retinascan_hf.training.feature_cache import FeatureCache, augmentation_key, cached_features

BATCH = 16  # small_config's feature_batch_size


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return save_small_corpus(tmp_path_factory.mktemp("corpus") / "corpus")


def train(output_dir, corpus_dir, cache_dir, **overrides):
    config = small_config(output_dir, data=str(corpus_dir), cache_dir=str(cache_dir), num_epochs=1, **overrides)
    return run_training(config)


def weights(result) -> dict[str, torch.Tensor]:
    return result.trainer.unwrapped_model.state_dict()


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []


@pytest.fixture(scope="module")
def reference(corpus_dir, tmp_path_factory):
    """A run that filled an empty cache: the weights every other cache state must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("reference")
    result = train(root / "run", corpus_dir, root / "cache")
    assert result.metrics["feature_cache"]["total"]["reused"] == 0
    return weights(result), root / "cache"


def tiny_views(split: datasets.Dataset) -> tuple[RetinaScanModel, FundusViews, RetinaScanImageProcessor]:
    model, processor = random_retinascan(trainable_tiny_clip_config(image_size=32), seed=0)  # `--backbone tiny`
    return model, FundusViews(split, processor, FundusAugmentation(), seed=0), processor


def test_a_full_cache_gives_the_weights_of_the_run_that_filled_it(reference, corpus_dir, tmp_path):
    expected, cache_dir = reference
    reused = train(tmp_path / "run", corpus_dir, cache_dir)
    assert reused.metrics["feature_cache"]["total"]["computed"] == 0
    assert_same_weights(expected, weights(reused))


def test_a_cache_partly_filled_by_another_selection_gives_the_same_weights(reference, corpus_dir, tmp_path):
    expected, _ = reference
    train_split = datasets.load_from_disk(str(corpus_dir))["train"].select([3, 9, 1, 20, 11, 5, 8])
    model, views, processor = tiny_views(train_split)
    augmentation = FundusAugmentation()
    cache = FeatureCache(tmp_path / "cache", backbone_fingerprint(model, processor), augmentation_key(augmentation, 0))
    cached_features(model, views, "train", 2, cache=cache, accelerator=Accelerator(cpu=True), batch_size=BATCH)
    partly = train(tmp_path / "run", corpus_dir, tmp_path / "cache")
    assert partly.metrics["feature_cache"]["splits"]["train"]["reused"] == 14
    assert_same_weights(expected, weights(partly))


def test_kill_while_filling_the_cache_then_resume_gives_the_same_weights(reference, corpus_dir, tmp_path, monkeypatch):
    expected, _ = reference
    original, calls = RetinaScanModel.forward_features, []

    def dies_on_third_forward(self, pixel_values):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, pixel_values)

    monkeypatch.setattr(run_module, "cached_features", partial(cached_features, flush_every=8))
    monkeypatch.setattr(RetinaScanModel, "forward_features", dies_on_third_forward)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "run", corpus_dir, tmp_path / "cache")
    monkeypatch.setattr(RetinaScanModel, "forward_features", original)
    resumed = train(tmp_path / "run", corpus_dir, tmp_path / "cache", resume=True)
    assert 0 < resumed.metrics["feature_cache"]["total"]["reused"] < 90  # the cache was partial
    assert_same_weights(expected, weights(resumed))


def test_kill_before_the_first_checkpoint_then_resume_gives_the_same_weights(
    reference, corpus_dir, tmp_path, monkeypatch
):
    expected, _ = reference

    def killed(self, batch):
        raise KeyboardInterrupt

    original = RetinaScanTrainer._step
    monkeypatch.setattr(RetinaScanTrainer, "_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "run", corpus_dir, tmp_path / "cache")
    monkeypatch.setattr(RetinaScanTrainer, "_step", original)
    assert not (tmp_path / "run" / "checkpoints").exists()
    resumed = train(tmp_path / "run", corpus_dir, tmp_path / "cache", resume=True)
    assert resumed.metrics["feature_cache"]["total"]["computed"] == 0
    assert_same_weights(expected, weights(resumed))


def test_computing_features_draws_nothing_from_the_global_rng(corpus_dir):
    model, views, _ = tiny_views(datasets.load_from_disk(str(corpus_dir))["validation"])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    compute_features(model, views, [(row, (0, 1)) for row in range(5)], accelerator=Accelerator(cpu=True), batch_size=4)
    assert torch.equal(before, torch.get_rng_state())


def test_an_images_features_do_not_depend_on_its_batch_companions(corpus_dir):
    model, views, _ = tiny_views(datasets.load_from_disk(str(corpus_dir))["train"])
    accelerator = Accelerator(cpu=True)

    def features(rows):
        computed = compute_features(
            model, views, [(row, (0, 1)) for row in rows], accelerator=accelerator, batch_size=BATCH, progress=False
        )
        keys = zip(computed.rows.tolist(), computed.views.tolist(), strict=True)
        return dict(zip(keys, computed.features, strict=True))

    everything = features(range(len(views)))
    alone = features([7])
    among_others = features([12, 7, 29])
    assert all(torch.equal(everything[key], alone[key]) for key in alone)
    assert all(torch.equal(everything[key], among_others[key]) for key in among_others)
