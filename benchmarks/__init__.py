"""Benchmark code (modules here) and results (JSON files here); `scripts/benchmark*.py` drive them.

Benchmarks live outside the library: they measure `retinascan_hf`, they are not part of what users install.
"""
