"""Exact kNN over feature banks of 16,231 and 1,000,000 x 512: query time, memory, and where the time goes.

Baselines measured in the same run: a float32 brute-force scan (a float32 copy of the bank times the
query: what "exact" means here) and an fp16 matrix-vector scan, plus the machine's read bandwidth (a
float32 sum over 1 GiB), so the query time reads as a fraction of what memory allows. Two kinds of bank:
rows spread over the sphere (neighbours stand out), and rows in tight clusters (thousands of rows share a
query's similarity: the worst case for a prefilter, which must then re-rank them all). Every timed query
is checked against the brute-force neighbours.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.memmap_training import memory_status
from benchmarks.timing import time_call
from retinascan_hf import FeatureBank

REFERENCE_BANK = 16_231
MILLION = 1_000_000
_GIB = 2**30


def median_ms(function: Callable[[], object], repeats: int) -> float:
    return round(1000 * time_call(function, repeats=repeats, warmup=2), 3)


def read_bandwidth_gib_s() -> float:
    """GiB/s of a float32 sum over 1 GiB (what a memory-bound scan can hope for on this machine)."""
    data = torch.ones(_GIB // 4)
    return round(1000 / median_ms(data.sum, repeats=5), 1)


def bank_rows(size: int, dim: int, kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` rows and 64 queries: `"sphere"` (independent Gaussian directions) or `"clustered"` (50 centres)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "sphere":
        return torch.randn(size, dim, generator=generator), torch.randn(64, dim, generator=generator)
    centres = torch.randn(50, dim, generator=generator)
    rows = centres[torch.randint(0, 50, (size,), generator=generator)]
    rows += 0.35 * torch.randn(size, dim, generator=generator)
    return rows, centres[torch.arange(64) % 50] + 0.35 * torch.randn(64, dim, generator=generator)


def profile_query(bank: FeatureBank, query: torch.Tensor, k: int) -> dict[str, Any]:
    """One query's int8 scan and re-rank timed apart, and how many rows the re-rank had to score."""
    seen: dict[str, float] = {}
    rerank = bank.index._rerank

    def timed_rerank(query_row, ceiling, rounding, top):
        start = time.perf_counter()
        result = rerank(query_row, ceiling, rounding, top)
        seen["rerank_ms"] = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        first = ceiling.topk(min(len(bank), top + 32)).indices
        kth = float((bank.embeddings[first].float() @ query_row).topk(top).values[-1])
        seen["candidates"] = int((ceiling >= kth - rounding).sum())
        seen["counting_ms"] = 1000 * (time.perf_counter() - start)
        return result

    bank.index._rerank = timed_rerank
    try:
        start = time.perf_counter()
        bank.search(query, k)
        total = 1000 * (time.perf_counter() - start) - seen.pop("counting_ms", 0.0)
    finally:
        del bank.index._rerank
    return {"total_ms": round(total, 2), "rerank_ms": round(seen["rerank_ms"], 2), "candidates": seen["candidates"]}


def measure_bank(size: int, dim: int, kind: str, k: int, repeats: int, scratch: Path) -> dict[str, Any]:
    rows, queries = bank_rows(size, dim, kind, seed=size)
    grades = torch.randint(0, 5, (size,))
    result: dict[str, Any] = {"rows": size, "dim": dim, "data": kind, "k": k}
    start = time.perf_counter()
    built = FeatureBank(rows, grades, image_ids=[f"bench/{row}" for row in range(size)], sources=["bench"] * size)
    result["build_s"] = round(time.perf_counter() - start, 2)
    del rows
    start = time.perf_counter()
    path = built.save_pretrained(scratch)
    result["save_s"] = round(time.perf_counter() - start, 2)
    result["file_mib"] = round(path.stat().st_size / 2**20, 1)
    del built
    before = memory_status()
    start = time.perf_counter()
    bank = FeatureBank.from_file(path)
    result["load_s"] = round(time.perf_counter() - start, 2)
    after_load = memory_status()
    start = time.perf_counter()
    bank.search(queries[:1], k)  # builds the int8 codes of a large bank
    result["first_query_s"] = round(time.perf_counter() - start, 2)
    after_codes = memory_status()
    result["memory_mib"] = {
        "anonymous_after_load": round(after_load["anon"] - before["anon"]),
        "file_backed_after_load": round(after_load["file"] - before["file"]),
        "anonymous_after_first_query": round(after_codes["anon"] - before["anon"]),
        "file_backed_after_first_query": round(after_codes["file"] - before["file"]),
        "fp16_rows": round(bank.embeddings.numel() * 2 / 2**20),
        "int8_codes": round(size * (dim + 12) / 2**20) if size >= bank.prefilter_min_rows else 0,
    }
    reference = bank.embeddings.float()
    normalised = torch.nn.functional.normalize(queries, dim=-1)
    expected = (normalised @ reference.T).topk(k, dim=-1).indices
    found = torch.stack([bank.search(query[None], k)[1][0] for query in queries])
    result["queries_matching_brute_force"] = f"{int((found == expected).all(dim=1).sum())}/{len(queries)}"
    cycle = iter(range(10**9))

    def one_query() -> None:
        bank.search(queries[next(cycle) % len(queries)][None], k)

    result["query_ms"] = median_ms(one_query, repeats)
    result["batch32_ms_per_query"] = round(
        median_ms(lambda: bank.search(queries[:32], k), max(3, repeats // 10)) / 32, 3
    )
    query = normalised[:1]
    result["baseline_fp32_scan_ms"] = median_ms(lambda: torch.mv(reference, query[0]).topk(k), repeats)
    half, half_query = bank.embeddings, query[0].half()
    result["fp16_scan_ms"] = median_ms(lambda: torch.mv(half, half_query).topk(k), repeats)
    result["ratio_to_fp32_scan"] = round(result["query_ms"] / result["baseline_fp32_scan_ms"], 3)
    if size >= bank.prefilter_min_rows:
        profiles = [profile_query(bank, queries[index][None], k) for index in range(8)]
        result["profile_median"] = {
            name: statistics.median(profile[name] for profile in profiles) for name in profiles[0]
        }
        result["profile_median"]["int8_scan_ms"] = round(
            result["profile_median"]["total_ms"] - result["profile_median"]["rerank_ms"], 2
        )
        result["int8_scan_gib"] = round(size * dim / _GIB, 3)
    return result


def faiss_ms(size: int, dim: int, k: int, repeats: int) -> dict[str, float] | None:
    """faiss single-query times (exact `IndexFlatIP`, and the approximate 8-bit `IndexScalarQuantizer`), when
    faiss is installed: the yardstick for an optional faiss backend, which would have to beat the above."""
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(torch.get_num_threads())
    rows, queries = bank_rows(size, dim, "sphere", seed=size)
    rows = torch.nn.functional.normalize(rows, dim=-1).numpy()
    query = torch.nn.functional.normalize(queries[:1], dim=-1).numpy()
    flat = faiss.IndexFlatIP(dim)
    flat.add(rows)
    quantised = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    quantised.train(rows)
    quantised.add(rows)
    return {
        "flat_ip_exact_ms": median_ms(lambda: flat.search(query, k), repeats),
        "sq8_approximate_ms": median_ms(lambda: quantised.search(query, k), repeats),
    }


def run_knn_benchmark(sizes: list[int], dim: int, k: int, repeats: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    results: dict[str, Any] = {"threads": threads, "read_bandwidth_gib_s": read_bandwidth_gib_s(), "banks": []}
    for size in sizes:
        for kind in ("sphere", "clustered"):
            with tempfile.TemporaryDirectory(prefix="retinascan-knn-bench-") as scratch:
                row = measure_bank(size, dim, kind, k, repeats, Path(scratch))
            print(row, flush=True)
            results["banks"].append(row)
    results["faiss"] = {str(size): faiss_ms(size, dim, k, repeats) for size in sizes}
    return results


__all__ = ["bank_rows", "measure_bank", "read_bandwidth_gib_s", "run_knn_benchmark"]
