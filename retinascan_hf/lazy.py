"""Lazy package attributes (PEP 562): `from retinascan_hf import X` imports X's module on first use only.

The package `__init__` files of this library list their public names without importing the modules that
define them, because importing any `retinascan_hf.x` runs every parent `__init__`: an eager one would make
`retinascan --help` import torch and transformers (seconds) to print a few lines.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, resolving each name of `exports` (name -> relative module name,
    e.g. `{"FeatureBank": "feature_bank"}`) by importing that module when the name is first looked up."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        setattr(importlib.import_module(package), name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *exports})

    return __getattr__, __dir__


__all__ = ["lazy_attributes"]
