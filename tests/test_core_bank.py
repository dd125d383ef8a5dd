"""FeatureBank: exact kNN against brute force, voting, storage format, resolution and mismatches."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers.testing_utils import CaptureLogger

from retinascan_hf import FEATURE_BANK_NAME, FeatureBank, FeatureBankMismatchError
from retinascan_hf.feature_bank import logger


def random_bank(n=200, dim=16, seed=0, **kwargs) -> FeatureBank:
    generator = torch.Generator().manual_seed(seed)
    return FeatureBank(
        torch.randn(n, dim, generator=generator), torch.randint(0, 5, (n,), generator=generator), **kwargs
    )


@pytest.mark.parametrize("chunk_size", [7, 64, 65536])
def test_search_is_exact_cosine_top_k_whatever_the_chunking(chunk_size):
    bank = random_bank()
    queries = torch.randn(9, 16)
    sims, idx = bank.search(queries, k=10, chunk_size=chunk_size)
    brute = torch.nn.functional.normalize(queries, dim=-1) @ bank.embeddings.float().T
    expected_sims, expected_idx = brute.topk(10, dim=-1)
    assert torch.equal(idx, expected_idx)
    assert torch.allclose(sims, expected_sims, atol=1e-6)
    assert torch.all(sims[:, :-1] >= sims[:, 1:])  # nearest first


def test_uniform_vote_counts_neighbour_grades():
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    bank = FeatureBank(embeddings, [2, 2, 3, 0, 0])
    result = bank.knn(torch.tensor([[1.0, 0.05]]), k=3, weighting="uniform")
    assert torch.allclose(result.scores, torch.tensor([[0.0, 0.0, 2 / 3, 1 / 3, 0.0]]), atol=1e-6)
    assert result.grades.tolist() == [2]
    assert result.indices[0].tolist() == [0, 1, 2]


def test_distance_weighting_lets_an_exact_match_outvote_a_majority():
    embeddings = torch.tensor([[1.0, 0.0], [0.7, 0.7], [0.72, 0.69], [0.69, 0.72]])
    bank = FeatureBank(embeddings, [4, 0, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert bank.knn(query, k=4, weighting="uniform").grades.tolist() == [0]
    distance = bank.knn(query, k=4, weighting="distance")
    assert distance.grades.tolist() == [4]
    assert torch.allclose(distance.scores.sum(-1), torch.ones(1))


def test_k_larger_than_bank_uses_every_row():
    bank = random_bank(n=4)
    result = bank.knn(torch.randn(2, 16), k=50)
    assert result.indices.shape == (2, 4)


def test_save_format_and_round_trip(tmp_path):
    bank = random_bank(n=30, image_ids=[f"img{i}" for i in range(30)], sources=["aptos"] * 30, config_hash="abc123")
    path = bank.save_pretrained(tmp_path)
    assert path.name == FEATURE_BANK_NAME
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert handle.get_tensor("embeddings").dtype == torch.float16
        assert handle.get_tensor("grades").dtype == torch.int64
    assert metadata["dim"] == "16" and metadata["normalized"] == "l2" and metadata["config_hash"] == "abc123"
    loaded = FeatureBank.from_pretrained(tmp_path)
    assert torch.equal(loaded.embeddings, bank.embeddings) and torch.equal(loaded.grades, bank.grades)
    assert loaded.image_ids == bank.image_ids and loaded.sources == bank.sources
    assert loaded.config_hash == "abc123"


def test_resolves_from_the_hub_cache_layout_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--grader" / "snapshots" / ("a" * 40)
    random_bank(n=12).save_pretrained(snapshot)
    (cache / "models--org--grader" / "refs").mkdir(parents=True)
    (cache / "models--org--grader" / "refs" / "main").write_text("a" * 40)
    bank = FeatureBank.from_pretrained("org/grader", cache_dir=cache)
    assert len(bank) == 12


def test_missing_bank_is_none_when_allowed_and_an_error_otherwise(tmp_path):
    assert FeatureBank.from_pretrained(tmp_path, missing_ok=True) is None
    with pytest.raises(OSError):
        FeatureBank.from_pretrained(tmp_path)


def test_dim_mismatch_names_both_dims():
    bank = random_bank(dim=16)
    with pytest.raises(FeatureBankMismatchError, match=r"16-d.*32-d"):
        bank.check_compatible(32)
    with pytest.raises(FeatureBankMismatchError, match=r"\[B, 16\]"):
        bank.knn(torch.randn(2, 8))


def test_dtype_mismatches_are_refused(tmp_path):
    with pytest.raises(FeatureBankMismatchError, match="floating point"):
        FeatureBank(torch.ones(3, 4, dtype=torch.int32), [0, 1, 2])
    with pytest.raises(FeatureBankMismatchError, match=r"torch\.int64"):
        random_bank().knn(torch.ones(2, 16, dtype=torch.long))
    # A file whose metadata declares one dtype but stores another is refused on load.
    from safetensors.torch import save_file

    save_file(
        {"embeddings": torch.randn(3, 4), "grades": torch.tensor([0, 1, 2])},
        str(tmp_path / FEATURE_BANK_NAME),
        metadata={"format": "retinascan-feature-bank", "dim": "4", "dtype": "float16"},
    )
    with pytest.raises(FeatureBankMismatchError, match=r"declares dtype float16 but stores torch.float32"):
        FeatureBank.from_pretrained(tmp_path)


def test_config_hash_mismatch_is_logged():
    bank = random_bank(config_hash="aaaa")
    with CaptureLogger(logger) as captured:
        bank.check_compatible(16, config_hash="bbbb")
    assert "aaaa" in captured.out and "bbbb" in captured.out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embeddings": torch.randn(3, 4), "grades": [0, 1]}, "3 embeddings but 2 grades"),
        ({"embeddings": torch.randn(2, 4), "grades": [0, 7]}, r"\[0, 4\]"),
        ({"embeddings": torch.randn(2, 4), "grades": [0, 1], "image_ids": ["a"]}, "image_ids"),
        ({"embeddings": torch.randn(0, 4), "grades": []}, "non-empty"),
    ],
)
def test_invalid_banks_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureBank(**kwargs)


def test_a_non_floating_model_dtype_is_refused_naming_both_dtypes():
    bank = random_bank(dim=16)
    bank.check_compatible(16, dtype=torch.bfloat16)  # any floating dtype is searchable
    with pytest.raises(FeatureBankMismatchError, match=r"torch\.float16.*torch\.int8"):
        bank.check_compatible(16, dtype=torch.int8)
