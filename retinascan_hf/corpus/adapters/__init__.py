"""Adapters: one per published data-set layout, each turning a folder into :class:`Record` rows.

An adapter reads only the label files and checks labels; opening images is the build's job, so
all adapters stay cheap and share one validation path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from ..schema import Record
from .aptos import read_aptos
from .ddr import read_ddr
from .deepdrid import read_deepdrid
from .eyepacs import read_eyepacs
from .gdrbench import read_gdrbench
from .generic_csv import read_generic_csv
from .idrid import read_idrid
from .messidor2 import read_messidor2

Adapter = Callable[[Path], Iterator[Record]]

ADAPTERS: dict[str, Adapter] = {
    "eyepacs": read_eyepacs,
    "aptos": read_aptos,
    "idrid": read_idrid,
    "ddr": read_ddr,
    "deepdrid": read_deepdrid,
    "messidor2": read_messidor2,
    "gdrbench": read_gdrbench,
    "csv": read_generic_csv,
}
"""Adapter per data-set kind, keyed by the name ``--source KIND=PATH`` uses."""

__all__ = ["ADAPTERS", "Adapter"]
