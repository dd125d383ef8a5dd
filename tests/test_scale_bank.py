"""Feature banks at scale: the int8-prefiltered search is exact, storage is memory-mapped, ids are byte tensors.

The int8 path is forced on small banks here (`prefilter_min_rows = 0`) so that every property is checked
against a brute-force float32 scan in milliseconds; the million-row timings live in `scripts/benchmark_knn.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from retinascan_hf import FEATURE_BANK_NAME, FeatureBank
from retinascan_hf.feature_bank import StringColumn, _int8_dot, _Int8Codes, _query_codes


def clustered(n: int, dim: int, seed: int, clusters: int = 8, noise: float = 0.3) -> torch.Tensor:
    """Rows around a few centres: many rows share a similarity with a query, the hard case for a prefilter."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    labels = torch.randint(0, clusters, (n,), generator=generator)
    return centres[labels] + noise * torch.randn(n, dim, generator=generator)


def brute_force(bank: FeatureBank, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.nn.functional.normalize(queries, dim=-1) @ bank.embeddings.float().T).topk(k, dim=-1)


@pytest.mark.parametrize("data", ["random", "clustered", "near_duplicates"])
@pytest.mark.parametrize("k", [1, 10, 64])
def test_int8_prefiltered_search_returns_the_float32_neighbours(data: str, k: int) -> None:
    if data == "random":
        rows = torch.randn(3000, 48, generator=torch.Generator().manual_seed(k))
    elif data == "clustered":
        rows = clustered(3000, 48, seed=k)
    else:  # 300 rows repeated ten times with tiny jitter: hundreds of rows within the int8 error of each other
        base = torch.randn(300, 48, generator=torch.Generator().manual_seed(k))
        rows = base.repeat(10, 1) + 1e-3 * torch.randn(3000, 48, generator=torch.Generator().manual_seed(k + 1))
    bank = FeatureBank(rows, torch.randint(0, 5, (3000,)))
    bank.prefilter_min_rows = 0
    queries = torch.cat([rows[:5] + 0.05 * torch.randn(5, 48), torch.randn(3, 48)])
    sims, indices = bank.search(queries, k)
    expected_sims, expected_indices = brute_force(bank, queries, k)
    assert torch.allclose(sims, expected_sims, atol=1e-6)
    # Rows with (float32-)equal similarity may come in either order; everything else must match exactly.
    for row in range(len(queries)):
        same = set(indices[row].tolist()) == set(expected_indices[row].tolist())
        assert same or torch.allclose(sims[row], expected_sims[row], atol=0), (data, k, row)
    single = torch.stack([bank.search(query[None], k)[1][0] for query in queries])
    assert torch.equal(single, indices)


def test_the_int8_error_bound_holds_for_every_row() -> None:
    rows = torch.nn.functional.normalize(clustered(2000, 64, seed=5), dim=-1).half()
    codes = _Int8Codes.build(rows)
    queries = torch.nn.functional.normalize(torch.randn(16, 64), dim=-1)
    query_codes, query_scales, query_errors = _query_codes(queries)
    approx = _int8_dot(query_codes, codes.codes).float() * query_scales[:, None] * codes.scales
    exact = queries.double() @ rows.double().T
    bounds = (
        codes.residuals[None] * queries.double().norm(dim=1)[:, None] + codes.code_norms[None] * query_errors[:, None]
    )
    slack = (approx.double() - exact).abs() - bounds
    assert slack.max() < 1e-6
    assert codes.residuals.max() < 0.05 and bounds.max() < 0.1  # tight enough to prune


def test_int8_dot_is_exact_and_k_is_validated() -> None:
    generator = torch.Generator().manual_seed(0)
    left = torch.randint(-127, 128, (3, 1024), dtype=torch.int8, generator=generator)
    right = torch.randint(-127, 128, (50, 1024), dtype=torch.int8, generator=generator)
    assert torch.equal(_int8_dot(left, right).long(), left.long() @ right.long().T)
    bank = FeatureBank(torch.randn(4, 8), [0, 1, 2, 3])
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            bank.search(torch.randn(1, 8), k)


def test_bank_file_round_trip_is_memory_mapped_with_ids_as_byte_tensors(tmp_path) -> None:
    ids = [f"eyepacs/{index}_left" for index in range(500)] + ["", "aptos/é-ü-中", "x" * 300]
    sources = ["eyepacs"] * 500 + ["aptos"] * 3
    bank = FeatureBank(clustered(503, 32, seed=1), torch.arange(503) % 5, image_ids=ids, sources=sources)
    path = bank.save_pretrained(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert {"image_ids.bytes", "image_ids.offsets", "sources.bytes", "sources.offsets"} <= set(handle.keys())
    assert metadata["version"] == "2" and "image_ids" not in metadata  # no megabyte-sized JSON header
    loaded = FeatureBank.from_pretrained(tmp_path)
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the file is mapped, its pages are read on demand
        assert str(path.resolve()) in maps.read_text()
    assert torch.equal(loaded.embeddings, bank.embeddings) and torch.equal(loaded.grades, bank.grades)
    assert isinstance(loaded.image_ids, StringColumn) and loaded.image_ids == ids and loaded.sources == sources
    assert loaded.image_ids[501] == "aptos/é-ü-中" and loaded.image_ids[-1] == "x" * 300
    assert loaded.image_ids[1:3] == ids[1:3]
    with pytest.raises(IndexError):
        loaded.image_ids[503]
    queries = torch.randn(4, 32)
    assert torch.equal(loaded.search(queries, 7)[1], bank.search(queries, 7)[1])
    loaded.save_pretrained(tmp_path / "again")  # a memory-mapped bank saves itself
    assert (tmp_path / "again" / FEATURE_BANK_NAME).read_bytes() == path.read_bytes()


def test_version_1_files_with_json_metadata_still_load(tmp_path) -> None:
    embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1).half()
    metadata = {
        "format": "retinascan-feature-bank",
        "version": "1",
        "dim": "8",
        "num_labels": "5",
        "normalized": "l2",
        "dtype": "float16",
        "config_hash": "abc",
        "image_ids": json.dumps([f"img{i}" for i in range(6)]),
        "sources": json.dumps(["aptos"] * 6),
    }
    save_file({"embeddings": embeddings, "grades": torch.arange(6) % 5}, str(tmp_path / FEATURE_BANK_NAME), metadata)
    bank = FeatureBank.from_pretrained(tmp_path)
    assert bank.image_ids == [f"img{i}" for i in range(6)] and bank.sources == ["aptos"] * 6
    assert bank.config_hash == "abc" and torch.equal(bank.embeddings, embeddings)


def test_stored_rows_that_are_not_unit_length_are_normalised_on_load(tmp_path) -> None:
    raw = torch.randn(5, 8) * 3
    metadata = {"format": "retinascan-feature-bank", "dim": "8", "dtype": "float16"}
    save_file({"embeddings": raw.half(), "grades": torch.arange(5)}, str(tmp_path / FEATURE_BANK_NAME), metadata)
    bank = FeatureBank.from_pretrained(tmp_path)
    assert torch.allclose(bank.embeddings.float().norm(dim=1), torch.ones(5), atol=1e-3)


def test_string_column_matches_a_list() -> None:
    values = ["a", "", "ß", "long" * 20]
    column = StringColumn.from_strings(values)
    assert column == values and list(column) == values and len(column) == 4 and column[-2] == "ß"
    assert column != values[:3] and column != "a"
    with pytest.raises(ValueError, match="offsets"):
        StringColumn(np.zeros(3, dtype=np.uint8), np.array([0, 5]))


def test_corrupt_id_strings_are_refused_when_the_bank_is_loaded(tmp_path) -> None:
    FeatureBank(torch.randn(3, 8), [0, 1, 2], image_ids=["a", "b", "c"]).save_pretrained(tmp_path)
    path = tmp_path / FEATURE_BANK_NAME
    data = bytearray(path.read_bytes())
    position = data.rindex(b"abc")  # the ids' UTF-8 bytes, stored last
    data[position : position + 3] = b"\xff\xfe\xfd"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="image_ids strings are corrupt"):
        FeatureBank.from_pretrained(tmp_path)


def test_a_bank_file_above_the_hubs_recommended_size_warns_where_it_was_written(tmp_path, monkeypatch) -> None:
    """The 20 GB line is a constant; lowering it lets a small bank stand in for a huge one."""
    from transformers.testing_utils import CaptureLogger

    from retinascan_hf import feature_bank

    bank = FeatureBank(clustered(64, 32, seed=2), torch.arange(64) % 5)
    with CaptureLogger(feature_bank.logger) as captured:
        bank.save_pretrained(tmp_path / "small")
    assert captured.out == ""
    monkeypatch.setattr(feature_bank, "_HUB_RECOMMENDED_FILE_BYTES", 1024)
    with CaptureLogger(feature_bank.logger) as captured:
        path = bank.save_pretrained(tmp_path / "large")
    assert str(path) in captured.out and "recommended 20 GB" in captured.out
    assert torch.equal(FeatureBank.from_pretrained(tmp_path / "large").embeddings, bank.embeddings)  # still written
