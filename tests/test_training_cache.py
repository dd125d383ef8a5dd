"""The frozen-backbone feature cache: computed once per image and view, reused by later runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from training_support import small_config

from retinascan_hf import RetinaScanImageProcessor, RetinaScanModel
from retinascan_hf.synthetic import save_synthetic_corpus, synthetic_corpus
from retinascan_hf.tiny_clip import random_retinascan, trainable_tiny_clip_config
from retinascan_hf.training import backbone_fingerprint, run_training
from retinascan_hf.training.augment import FundusAugmentation
from retinascan_hf.training.data import FundusViews
from retinascan_hf.training.feature_cache import FeatureCache, augmentation_key, cached_features

COUNTS = {"train": (6,) * 5, "validation": (3,) * 5, "test": (2,) * 5}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus") / "corpus"
    save_synthetic_corpus(directory, COUNTS, size=48, seed=0)
    return directory


def run_config(output_dir, corpus_dir, cache_dir, **overrides):
    return small_config(output_dir, data=str(corpus_dir), cache_dir=str(cache_dir), num_epochs=1, **overrides)


def test_second_run_with_the_same_backbone_computes_no_backbone_forward(tmp_path, corpus_dir, count_backbone_forwards):
    cache_dir = tmp_path / "cache"
    first = run_training(run_config(tmp_path / "first", corpus_dir, cache_dir))
    images = {name: sum(counts) for name, counts in COUNTS.items()}
    expected = images["train"] * 2 + images["validation"] + images["test"]  # n_views=2 for train only
    assert first.metrics["feature_cache"]["total"] == {"computed": expected, "reused": 0}
    # every forward has the fixed shape (the last of each split padded): features never depend on batch companions
    assert set(count_backbone_forwards) == {16}
    assert expected <= sum(count_backbone_forwards) < expected + 16 * len(COUNTS)

    count_backbone_forwards.clear()
    second = run_training(
        small_config(tmp_path / "second", data=str(corpus_dir), cache_dir=str(cache_dir), num_epochs=1)
    )
    assert second.metrics["feature_cache"]["total"] == {"computed": 0, "reused": expected}
    assert count_backbone_forwards == []  # training, calibration, bank and evaluation all ran from the cache
    assert second.metrics["feature_cache"]["directory"] == first.metrics["feature_cache"]["directory"]


def test_other_seed_recomputes_only_augmented_views(tmp_path, corpus_dir):
    cache_dir = tmp_path / "cache"
    run_training(small_config(tmp_path / "a", data=str(corpus_dir), cache_dir=str(cache_dir), num_epochs=1))
    other = run_training(
        small_config(tmp_path / "b", data=str(corpus_dir), cache_dir=str(cache_dir), num_epochs=1, seed=1)
    )
    # `--backbone tiny` draws its random backbone from the seed too: a new seed is a new backbone.
    assert other.metrics["feature_cache"]["total"]["reused"] == 0
    model, processor = random_retinascan(trainable_tiny_clip_config(image_size=32), seed=0)  # run a's backbone
    views = FundusViews(synthetic_corpus(COUNTS, size=48)["train"], processor, FundusAugmentation(), seed=0)
    accelerator = Accelerator(cpu=True)
    cache = FeatureCache(cache_dir, backbone_fingerprint(model, processor), augmentation_key(FundusAugmentation(), 5))
    _, stats = cached_features(
        model, views, "train", 3, cache=cache, accelerator=accelerator, batch_size=8, progress=False
    )
    assert vars(stats) == {"reused": len(views), "computed": 2 * len(views)}  # view 0 is seed-independent


def test_cache_is_keyed_by_image_and_matches_direct_forwards(tmp_path):
    model, processor = random_retinascan(seed=0)
    split = synthetic_corpus({"train": (2,) * 5}, size=48)["train"]
    augmentation = FundusAugmentation()
    cache = FeatureCache(tmp_path, backbone_fingerprint(model, processor), augmentation_key(augmentation, 0))
    accelerator = Accelerator(cpu=True)

    def features(dataset_split):
        views = FundusViews(dataset_split, processor, augmentation, seed=0)
        rows, stats = cached_features(
            model, views, "train", 2, cache=cache, accelerator=accelerator, batch_size=4, progress=False
        )
        return rows.load(), stats

    part, stats = features(split.select(range(4)))
    assert vars(stats) == {"reused": 0, "computed": 8}
    everything, stats = features(split.select([7, 3, 0, 1, 2, 4, 5, 6, 8, 9]))  # new rows, other order
    assert vars(stats) == {"reused": 8, "computed": 12}
    assert torch.equal(everything[2:5], part[:3]) and torch.equal(everything[1], part[3])
    with torch.no_grad():
        direct = model.forward_features(processor(list(split.select([7, 3])["image"]))["pixel_values"])
    assert torch.allclose(everything[:2, 0], direct, atol=1e-5)
    assert not torch.allclose(everything[:, 0], everything[:, 1])  # view 1 is augmented


def test_an_image_id_reused_for_another_picture_is_recomputed_not_served_stale(tmp_path):
    model, processor = random_retinascan(seed=0)
    augmentation = FundusAugmentation()
    cache = FeatureCache(tmp_path, backbone_fingerprint(model, processor), augmentation_key(augmentation, 0))
    small = synthetic_corpus({"train": (1,) * 5}, size=48, seed=0)["train"]
    other = synthetic_corpus({"train": (1,) * 5}, size=48, seed=1)["train"]  # same image ids, other pictures
    assert small["image_id"] == other["image_id"]

    def features(split):
        views = FundusViews(split, processor, augmentation, seed=0)
        rows, stats = cached_features(
            model, views, "train", 1, cache=cache, accelerator=Accelerator(cpu=True), batch_size=8, progress=False
        )
        return rows.load(), stats

    first, _ = features(small)
    second, stats = features(other)
    assert vars(stats) == {"reused": 0, "computed": 5}
    with torch.no_grad():
        direct = model.forward_features(processor(list(other["image"]))["pixel_values"])
    assert torch.allclose(second[:, 0], direct, atol=1e-5) and not torch.allclose(second, first)
    assert vars(features(small)[1]) == {"reused": 5, "computed": 0}  # both versions stay cached


def test_fingerprint_follows_weights_and_processor_not_the_heads():
    model, processor = random_retinascan(seed=0)
    reference = backbone_fingerprint(model, processor)
    with torch.no_grad():
        model.projection.fc1.weight.add_(1.0)
    assert backbone_fingerprint(model, processor) == reference
    assert backbone_fingerprint(random_retinascan(seed=1)[0], processor) != reference
    processor.fundus_threshold = 0.1
    assert backbone_fingerprint(model, processor) != reference


def test_fingerprint_follows_the_version_of_the_processors_pixel_code(monkeypatch):
    """The same settings give other pictures after a change to the processing code (the one reduction rule for
    every input form did): features cached from the old pictures must not be reused."""
    model, processor = random_retinascan(seed=0)
    reference = backbone_fingerprint(model, processor)
    monkeypatch.setattr(RetinaScanImageProcessor, "PIXELS_VERSION", RetinaScanImageProcessor.PIXELS_VERSION + 1)
    assert backbone_fingerprint(model, processor) != reference


def test_augmented_views_are_reproducible_and_keep_the_background_black():
    picture = synthetic_corpus({"train": (1,) * 5}, size=64)["train"][4]["image"]
    augmentation = FundusAugmentation()
    first = augmentation.view(picture, seed=0, image_id="x", view=1)
    assert first.tobytes() == augmentation.view(picture, seed=0, image_id="x", view=1).tobytes()
    assert first.tobytes() != augmentation.view(picture, seed=0, image_id="y", view=1).tobytes()
    assert augmentation.view(picture, seed=0, image_id="x", view=0) is picture
    assert np.asarray(first)[:3, :3].max() == 0


def test_cache_keeps_completed_groups_when_the_run_dies(tmp_path, monkeypatch):
    model, processor = random_retinascan(seed=0)
    views = FundusViews(synthetic_corpus({"train": (2,) * 5}, size=48)["train"], processor, FundusAugmentation(), 0)
    cache = FeatureCache(tmp_path, backbone_fingerprint(model, processor), augmentation_key(FundusAugmentation(), 0))
    accelerator = Accelerator(cpu=True)
    original, calls = RetinaScanModel.forward_features, []

    def dies_on_third_batch(self, pixel_values):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, pixel_values)

    monkeypatch.setattr(RetinaScanModel, "forward_features", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        cached_features(model, views, "train", 1, cache=cache, accelerator=accelerator, batch_size=2, flush_every=4)
    monkeypatch.setattr(RetinaScanModel, "forward_features", original)
    _, stats = cached_features(model, views, "train", 1, cache=cache, accelerator=accelerator, batch_size=2)
    assert vars(stats) == {"reused": 4, "computed": 6}  # the first group of 4 images survived the crash


def test_fingerprint_survives_saving_the_model_folder(tmp_path):
    """A processor loaded from a model folder carries `auto_map`; it must still find training's features."""
    model, processor = random_retinascan(seed=0)
    at_training = backbone_fingerprint(model, processor)  # computed before anything is saved, as training does
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = RetinaScanImageProcessor.from_pretrained(tmp_path)
    assert "auto_map" in loaded.to_dict()
    assert backbone_fingerprint(RetinaScanModel.from_pretrained(tmp_path), loaded) == at_training
