"""Adapters: one per published data-set layout, each turning a folder into :class:`Record` rows.

An adapter reads only the label files and checks labels; opening images is the build's job, so
all adapters stay cheap and share one validation path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from retinascan_hf.corpus.adapters.aptos import read_aptos
from retinascan_hf.corpus.adapters.ddr import read_ddr
from retinascan_hf.corpus.adapters.deepdrid import read_deepdrid
from retinascan_hf.corpus.adapters.eyepacs import read_eyepacs
from retinascan_hf.corpus.adapters.gdrbench import read_gdrbench
from retinascan_hf.corpus.adapters.generic_csv import read_generic_csv
from retinascan_hf.corpus.adapters.idrid import read_idrid
from retinascan_hf.corpus.adapters.messidor2 import read_messidor2
from retinascan_hf.corpus.schema import Record

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
