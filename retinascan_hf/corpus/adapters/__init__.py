"""Adapters: one per published data-set layout, each turning a folder into :class:`Record` rows.

An adapter reads only the label files and checks labels; opening images is the build's job, so
all adapters stay cheap and share one validation path. ``ADAPTERS`` is built on first use: the CLI
needs only the kind names (``KINDS``) to parse ``--source KIND=PATH``, and must not import the
label schema (which imports transformers) to print its ``--help``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..schema import Record

Adapter = Callable[[Path], Iterator["Record"]]

_READERS: dict[str, tuple[str, str]] = {
    "eyepacs": ("eyepacs", "read_eyepacs"),
    "aptos": ("aptos", "read_aptos"),
    "idrid": ("idrid", "read_idrid"),
    "ddr": ("ddr", "read_ddr"),
    "deepdrid": ("deepdrid", "read_deepdrid"),
    "messidor2": ("messidor2", "read_messidor2"),
    "gdrbench": ("gdrbench", "read_gdrbench"),
    "csv": ("generic_csv", "read_generic_csv"),
}
KINDS: tuple[str, ...] = tuple(_READERS)
"""The names ``--source KIND=PATH`` accepts, in the order the CLI lists them."""


def __getattr__(name: str) -> Any:
    """``ADAPTERS``: adapter per data-set kind, keyed by the name ``--source KIND=PATH`` uses."""
    if name != "ADAPTERS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    adapters: dict[str, Adapter] = {
        kind: getattr(importlib.import_module(f".{module}", __name__), function)
        for kind, (module, function) in _READERS.items()
    }
    globals()["ADAPTERS"] = adapters
    return adapters


__all__ = ["ADAPTERS", "KINDS", "Adapter"]
