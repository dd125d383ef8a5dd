"""The benchmark's results: rows with their ratios and targets, the printed table, `results.json`'s schema, and
the README performance table generated from it (between two markers, so the README never holds a typed number).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .readme_blocks import end_marker, find_block, replace_block, start_marker

SCHEMA_VERSION = 1
README_BLOCK = "benchmark-table"
README_START = start_marker(README_BLOCK, "scripts/benchmark.py from benchmarks/results.json")
README_END = end_marker(README_BLOCK)


@dataclass
class Target:
    """`ratio <= value` or `ratio >= value` (or, for absolute rows, the value itself)."""

    op: str
    value: float

    def check(self, measured: float) -> bool:
        return measured <= self.value if self.op == "<=" else measured >= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass
class Row:
    """One measured quantity (`value` in `unit`), optionally a ratio to another row of the same run."""

    id: str
    label: str
    value: float
    unit: str
    ratio: float | None = None
    ratio_of: str | None = None
    target: Target | None = None
    met: bool | None = None
    note: str = ""
    fraction_of_peak: float | None = None

    def relate(self, other: Row, *, target: Target | None = None, note: str = "", invert: bool = False) -> None:
        """Set `ratio` to this row over `other` (or `other` over this one with `invert`), checked against `target`."""
        self.ratio = other.value / self.value if invert else self.value / other.value
        self.ratio_of = other.id
        self.target = target
        self.met = target.check(self.ratio) if target is not None else None
        self.note = note or self.note

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["target"] = None if self.target is None else {"op": self.target.op, "value": self.target.value}
        return payload


def _status(row: dict[str, Any]) -> str:
    if row["met"] is None:
        return ""
    return "met" if row["met"] else "MISSED"


def _target_text(row: dict[str, Any]) -> str:
    target = row["target"]
    if target is None:
        return ""
    what = "" if row["ratio_of"] is not None else f" {row['unit']}"
    return f"{target['op']} {target['value']:g}{what}"


def _value_text(row: dict[str, Any]) -> str:
    value = row["value"]
    digits = 2 if abs(value) < 100 else 0
    return f"{value:,.{digits}f} {row['unit']}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The rows of the table (header line included), as every benchmark script prints them."""
    lines = [f"{'measurement':<66} {'value':>16} {'ratio':>8} {'target':>9}  status  note"]
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.3f}"
        status = f"{_status(row):<6}"
        lines.append(
            f"{row['label']:<66} {_value_text(row):>16} {ratio:>8} {_target_text(row):>9}  {status}  {row['note']}"
        )
    return "\n".join(lines)


def format_table(results: dict[str, Any]) -> str:
    """The one table `scripts/benchmark.py` prints."""
    lines = [format_rows(results["rows"])]
    compute = results["compute"]
    machine = results["machine"]
    flags = ", ".join(flag for flag, present in machine["cpu_flags"].items() if present) or "none of note"
    lines.append(
        f"\nmatmul fp32 {compute['matmul_gflops']:.1f} GFLOP/s; backbone {compute['backbone_gflop_per_image']:.2f} "
        f"GFLOP/image; {machine['cpu_model']}, {machine['logical_cpus']} CPUs ({flags}), "
        f"{machine['torch_threads']} threads, load average {machine['load_average_1min']}"
    )
    return "\n".join(lines)


def render_readme_table(results: dict[str, Any]) -> str:
    """The README block (markers included) for `results`."""
    machine, compute = results["machine"], results["compute"]
    flags = ", ".join(flag for flag, present in machine["cpu_flags"].items() if present) or "none of note"
    lines = [
        README_START,
        f"Measured {machine['date_utc'][:10]} by `make benchmark` ({results['mode']} mode) on {machine['cpu_model']}, "
        f"{machine['logical_cpus']} logical CPUs ({flags}), {machine['torch_threads']} threads, load average "
        f"{machine['load_average_1min']} at the end; torch {machine['libraries']['torch']}, onnxruntime "
        f"{machine['libraries']['onnxruntime']}. Fp32 matmul: {compute['matmul_gflops']:.1f} GFLOP/s; the backbone "
        f"needs {compute['backbone_gflop_per_image']:.2f} GFLOP per image; a forward's GFLOP/s over that matmul "
        "rate is its note's multiple (bf16 and int8 kernels, and ONNX Runtime's own fp32 GEMM, can exceed it).",
        "",
        "| measurement | value | ratio | target | status | note |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in results["rows"]:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.3f}"
        note = row["note"]
        if row["fraction_of_peak"] is not None:
            note = f"{note}; {row['fraction_of_peak']:.2f}× the fp32 matmul rate".lstrip("; ")
        lines.append(
            f"| {row['label']} | {_value_text(row)} | {ratio} | {_target_text(row)} | {_status(row)} | {note} |"
        )
    lines.append(README_END)
    return "\n".join(lines)


def readme_block(readme: str) -> str | None:
    """The generated block currently in `readme` (markers included), or None."""
    return find_block(readme, README_BLOCK)


def update_readme(path: str | Path, results: dict[str, Any]) -> bool:
    """Replace the README's generated block with one for `results`; return whether the text changed."""
    return replace_block(path, README_BLOCK, render_readme_table(results))


_ROW_TYPES = {
    "id": str,
    "label": str,
    "value": (int, float),
    "unit": str,
    "ratio": (int, float, type(None)),
    "ratio_of": (str, type(None)),
    "target": (dict, type(None)),
    "met": (bool, type(None)),
    "note": str,
    "fraction_of_peak": (int, float, type(None)),
}


def validate_results(results: dict[str, Any]) -> None:
    """Raise ValueError unless `results` has the shape `results.json` promises (types, ratio references)."""
    for key in ("schema_version", "mode", "machine", "settings", "compute", "rows"):
        if key not in results:
            raise ValueError(f"results lack {key!r}")
    if results["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {results['schema_version']} != {SCHEMA_VERSION}")
    for key in ("cpu_model", "cpu_flags", "logical_cpus", "torch_threads", "libraries", "date_utc"):
        if key not in results["machine"]:
            raise ValueError(f"machine info lacks {key!r}")
    for key in ("matmul_gflops", "backbone_gflop_per_image"):
        if not isinstance(results["compute"].get(key), (int, float)) or results["compute"][key] <= 0:
            raise ValueError(f"compute.{key} must be a positive number")
    ids = set()
    for row in results["rows"]:
        for key, types in _ROW_TYPES.items():
            if not isinstance(row.get(key), types):
                raise ValueError(f"row {row.get('id')!r}: {key} has type {type(row.get(key)).__name__}")
        if not row["value"] > 0:
            raise ValueError(f"row {row['id']!r}: value must be positive, got {row['value']}")
        ids.add(row["id"])
    for row in results["rows"]:
        if row["ratio_of"] is not None and row["ratio_of"] not in ids:
            raise ValueError(f"row {row['id']!r} is a ratio of the unknown row {row['ratio_of']!r}")
        if (row["target"] is None) != (row["met"] is None):
            raise ValueError(f"row {row['id']!r}: a target needs a met flag and vice versa")


__all__ = [
    "README_END",
    "README_START",
    "SCHEMA_VERSION",
    "Row",
    "Target",
    "format_rows",
    "format_table",
    "readme_block",
    "render_readme_table",
    "update_readme",
    "validate_results",
]
