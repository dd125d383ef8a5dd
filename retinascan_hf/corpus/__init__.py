"""The merged DR corpus: published data sets -> screened, patient-grouped ``DatasetDict``.

The names load lazily (see ``retinascan_hf.lazy``), so ``retinascan data --help`` imports neither
``datasets`` nor torch.
"""

from ..lazy import lazy_attributes

_EXPORTS = {
    "ADAPTERS": "adapters",
    "build_corpus": "build",
    "EmptySourceError": "build",
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


__all__ = sorted(_EXPORTS)
