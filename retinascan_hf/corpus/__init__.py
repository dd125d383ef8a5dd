"""The merged DR corpus: published data sets -> screened, patient-grouped ``DatasetDict``."""

from retinascan_hf.corpus.adapters import ADAPTERS
from retinascan_hf.corpus.build import build_corpus, read_sources
from retinascan_hf.corpus.dataset import corpus_features
from retinascan_hf.corpus.hub import corpus_card, push_corpus
from retinascan_hf.corpus.report import REPORT_FILE, BuildReport
from retinascan_hf.corpus.sampler import BalancedGradeSampler
from retinascan_hf.corpus.schema import ICDR_LABELS, Exclusion, Record
from retinascan_hf.corpus.split import SPLITS, Protocol

__all__ = [
    "ADAPTERS",
    "ICDR_LABELS",
    "REPORT_FILE",
    "SPLITS",
    "BalancedGradeSampler",
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
