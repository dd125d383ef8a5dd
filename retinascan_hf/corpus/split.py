"""Evaluation protocols: which split each kept record goes to.

Splits are assigned to patients, never to images, so both eyes (and repeat visits) of a person
stay on one side. Within a source, patients are ordered by their worst grade and spread over the
splits by smooth weighted round-robin, which gives every (source, grade) stratum its share of
each split to within two patients, each source its exact largest-remainder quota, and every
split at least one patient of each source that has as many patients as there are splits.
Each source draws from its own generator seeded by ``(seed, source name)``, so adding a source
to a build does not reshuffle the others.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import floor

import numpy as np

from .schema import GDRBENCH_SUBSETS, ICDR_LABELS, Record

SPLITS: tuple[str, str, str] = ("train", "validation", "test")
MIN_SPLIT_PATIENTS = len(ICDR_LABELS)
"""Fewer patients than this in a split (one per grade) is worth a warning: its metrics mean little."""
PROTOCOLS: tuple[str, ...] = ("merged", "loso", "gdrbench")
_GDRBENCH_SPLIT: dict[str | None, str] = {"train": "train", "crossval": "validation"}


@dataclass(frozen=True)
class Protocol:
    """How to split: ``merged``, ``loso:<source>`` or ``gdrbench[:<source>]``.

    ``merged`` splits every source by ``1 - val - test / val / test``. ``loso:<source>`` tests on
    all of ``<source>`` and splits the other sources into train/validation by ``val_ratio``.
    ``gdrbench`` follows GDRBench's own split files: ``*_crossval.txt`` is the test set, and
    validation is carved (grouped, stratified) from ``*_train.txt``. ``gdrbench:<source>`` is
    GDRBench's leave-one-domain-out exactly as its reference loader does it: train on the other
    domains' ``*_train.txt``, validate on their ``*_crossval.txt``, test on all of ``<source>``.
    """

    name: str
    held_out: str | None = None

    @classmethod
    def parse(cls, text: str) -> Protocol:
        """Parse the ``--protocol`` text; raises ValueError naming the accepted forms."""
        name, _, held_out = text.partition(":")
        if name not in PROTOCOLS or (name == "merged" and held_out) or (name == "loso" and not held_out):
            raise ValueError(f"unknown protocol {text!r}: use merged, loso:<source> or gdrbench[:<source>]")
        return cls(name, held_out or None)

    def __str__(self) -> str:
        return f"{self.name}:{self.held_out}" if self.held_out else self.name

    def wanted_splits(self, val_ratio: float, test_ratio: float) -> tuple[str, ...]:
        """The splits this protocol means to fill with these ratios (an empty one among them is a warning)."""
        wanted = {
            "train": True,
            "validation": val_ratio > 0 or (self.name == "gdrbench" and self.held_out is not None),
            "test": test_ratio > 0 or self.name != "merged",
        }
        return tuple(split for split in SPLITS if wanted[split])


def assign_splits(
    records: Sequence[Record], protocol: Protocol, *, seed: int, val_ratio: float, test_ratio: float
) -> list[str]:
    """The split name of each record, in order."""
    if protocol.held_out is not None:
        _require_source(records, protocol.held_out)
    if protocol.name == "merged":
        return grouped_stratified_split(records, (1 - val_ratio - test_ratio, val_ratio, test_ratio), seed=seed)
    if protocol.name == "loso":
        return _split_selected(
            records, lambda record: record.source != protocol.held_out, otherwise="test", val_ratio=val_ratio, seed=seed
        )
    _require_gdrbench_subsets(records)
    if protocol.held_out is None:
        return _split_selected(
            records, lambda record: record.subset == "train", otherwise="test", val_ratio=val_ratio, seed=seed
        )
    return ["test" if record.source == protocol.held_out else _GDRBENCH_SPLIT[record.subset] for record in records]


def split_warnings(
    records: Sequence[Record], split_names: Sequence[str], protocol: Protocol, wanted: Sequence[str]
) -> list[str]:
    """Why the splits may disappoint: a wanted split that is empty or holds fewer than `MIN_SPLIT_PATIENTS`
    patients, and (merged protocol) a source with too few patients to appear in every wanted split."""
    patients: dict[str, set[str]] = {split: set() for split in SPLITS}
    per_source: dict[str, dict[str, set[str]]] = defaultdict(lambda: {split: set() for split in SPLITS})
    for record, split in zip(records, split_names, strict=True):
        patients[split].add(record.patient_id)
        per_source[record.source][split].add(record.patient_id)
    total = len(set().union(*patients.values()))
    warnings = []
    for split in wanted:
        count = len(patients[split])
        if count == 0:
            warnings.append(
                f"The {split} split is empty: {total} patient(s) in all are too few for the requested ratios."
            )
        elif count < MIN_SPLIT_PATIENTS:
            warnings.append(
                f"The {split} split holds only {count} patient(s), fewer than {MIN_SPLIT_PATIENTS}: its metrics will "
                "mean little."
            )
    if protocol.name == "merged":
        for source, splits in sorted(per_source.items()):
            lacking = [split for split in wanted if not splits[split]]
            if lacking:
                count = len(set().union(*splits.values()))
                warnings.append(
                    f"Source {source!r} has {count} patient(s), too few for every split: {', '.join(lacking)} "
                    "get(s) none of its images."
                )
    return warnings


def grouped_stratified_split(records: Sequence[Record], ratios: Sequence[float], *, seed: int) -> list[str]:
    """Split names for ``records``, grouped by patient and stratified by source x worst grade."""
    worst_grade: dict[str, dict[str, int]] = defaultdict(dict)
    for record in records:
        patients = worst_grade[record.source]
        patients[record.patient_id] = max(patients.get(record.patient_id, 0), record.grade or 0)
    split_of_patient: dict[str, str] = {}
    for source, patients in worst_grade.items():
        rng = np.random.default_rng([seed, *source.encode()])
        ids = sorted(patients)
        tie_break = rng.permutation(len(ids))
        order = sorted(range(len(ids)), key=lambda i: (patients[ids[i]], tie_break[i]))
        for position, split in zip(order, _spread(len(ids), ratios, rng), strict=True):
            split_of_patient[ids[position]] = split
    return [split_of_patient[record.patient_id] for record in records]


def _spread(count: int, ratios: Sequence[float], rng: np.random.Generator) -> list[str]:
    """``count`` split names in the exact quotas, interleaved evenly and rotated at random.

    Even interleaving is what stratifies: any run of consecutive patients (one grade stratum)
    gets each split in proportion. The random rotation keeps small strata from always falling on
    the same split.
    """
    quotas = _quotas(count, ratios)
    credit = [0] * len(quotas)
    names: list[str] = []
    for _ in range(count):
        credit = [have + quota for have, quota in zip(credit, quotas, strict=True)]
        pick = credit.index(max(credit))
        credit[pick] -= count
        names.append(SPLITS[pick])
    offset = int(rng.integers(count))
    return names[offset:] + names[:offset]


def _quotas(count: int, ratios: Sequence[float]) -> list[int]:
    """Largest-remainder quotas, lifted to one patient for each non-empty split when possible."""
    raw = [count * ratio for ratio in ratios]
    quotas = [floor(share) for share in raw]
    by_remainder = sorted(range(len(raw)), key=lambda k: quotas[k] - raw[k])
    for k in by_remainder[: count - sum(quotas)]:
        quotas[k] += 1
    wanted = [k for k, ratio in enumerate(ratios) if ratio > 0]
    if count >= len(wanted):
        for k in wanted:
            if quotas[k] == 0:
                quotas[quotas.index(max(quotas))] -= 1
                quotas[k] = 1
    return quotas


def _split_selected(
    records: Sequence[Record], selected: Callable[[Record], bool], *, otherwise: str, val_ratio: float, seed: int
) -> list[str]:
    """Train/validation for the ``selected`` records (grouped, stratified), ``otherwise`` for the rest."""
    chosen = [record for record in records if selected(record)]
    chosen_splits = iter(grouped_stratified_split(chosen, (1 - val_ratio, val_ratio, 0.0), seed=seed))
    return [next(chosen_splits) if selected(record) else otherwise for record in records]


def _require_source(records: Sequence[Record], source: str) -> None:
    sources = sorted({record.source for record in records})
    if source not in sources:
        raise ValueError(f"held-out source {source!r} has no kept images; sources: {', '.join(sources)}")


def _require_gdrbench_subsets(records: Sequence[Record]) -> None:
    lacking = sorted({record.source for record in records if record.subset not in GDRBENCH_SUBSETS})
    if lacking:
        raise ValueError(
            "the gdrbench protocol needs GDRBench split files (splits/<SOURCE>_train.txt, "
            f"_crossval.txt); these sources have none: {', '.join(lacking)}"
        )
