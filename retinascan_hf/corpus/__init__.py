"""The merged DR corpus: published data sets -> screened, patient-grouped ``DatasetDict``."""

from .adapters import ADAPTERS
from .build import EmptySourceError, build_corpus, read_sources
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
    "EmptySourceError",
    "Exclusion",
    "Protocol",
    "Record",
    "build_corpus",
    "corpus_card",
    "corpus_features",
    "push_corpus",
    "read_sources",
]
