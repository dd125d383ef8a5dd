"""The merged DR corpus: published data sets -> screened, patient-grouped ``DatasetDict``.

The names load lazily (see ``retinascan_hf.lazy``), so ``retinascan data --help`` imports neither
``datasets`` nor torch.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

_EXPORTS = {
    "ADAPTERS": "adapters",
    "build_corpus": "build",
    "read_sources": "build",
    "corpus_features": "dataset",
    "corpus_card": "hub",
    "push_corpus": "hub",
    "REPORT_FILE": "report",
    "BuildReport": "report",
    "ICDR_LABELS": "schema",
    "Exclusion": "schema",
    "Record": "schema",
    "SPLITS": "split",
    "Protocol": "split",
}
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .adapters import ADAPTERS
    from .build import build_corpus, read_sources
    from .dataset import corpus_features
    from .hub import corpus_card, push_corpus
    from .report import REPORT_FILE, BuildReport
    from .schema import ICDR_LABELS, Exclusion, Record
    from .split import SPLITS, Protocol

__all__ = [
    "ADAPTERS",
    "ICDR_LABELS",
    "REPORT_FILE",
    "SPLITS",
    "BuildReport",
    "Exclusion",
    "Protocol",
    "Record",
    "build_corpus",
    "corpus_card",
    "corpus_features",
    "push_corpus",
    "read_sources",
]
