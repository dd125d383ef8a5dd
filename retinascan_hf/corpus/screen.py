"""Data-quality screening: which listed rows make it into the corpus, and why the others do not.

Every exclusion is recorded rather than raised, so that a build over tens of thousands of files
finishes and reports its bad files instead of dying on the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .schema import Exclusion, Record
from .validate import check_images


@dataclass(frozen=True)
class Excluded:
    """A listed row left out of the corpus.

    Attributes:
        image_id, source, path: the row (for a malformed row: the label file, and an id made of its name
            and line).
        reason: why it was left out.
        duplicate_of: the kept twin of a duplicate.
        line: the line of its label file that lists it (None for rows found by walking folders).
        detail: what is wrong with a malformed row.
    """

    image_id: str
    source: str
    path: str
    reason: Exclusion
    duplicate_of: str | None = None
    line: int | None = None
    detail: str | None = None


def screen_records(
    records: Sequence[Record], *, num_proc: int = 1, progress: bool = True
) -> tuple[list[Record], list[Excluded]]:
    """Split ``records`` into the kept ones and the excluded ones, keeping input order.

    Rows are dropped for a label problem, a repeated image id, a file that is missing or does not
    decode, and for an exact byte-level duplicate of an image kept earlier (in any source): the
    same photograph in two sources would otherwise leak between train and test. The first
    occurrence wins, so the result depends only on the order of ``records``.
    """
    excluded: list[Excluded] = []
    labelled: list[Record] = []
    seen_ids: set[str] = set()
    for record in records:
        issue = record.issue or (Exclusion.DUPLICATE_ID if record.image_id in seen_ids else None)
        if issue:
            excluded.append(_excluded(record, issue))
        else:
            seen_ids.add(record.image_id)
            labelled.append(record)

    checks = check_images([str(record.path) for record in labelled], num_proc=num_proc, progress=progress)
    kept: list[Record] = []
    first_with_content: dict[str, str] = {}
    for record, check in zip(labelled, checks, strict=True):
        if check.issue:
            excluded.append(_excluded(record, check.issue))
            continue
        original = first_with_content.setdefault(check.sha256, record.image_id)
        if original != record.image_id:
            excluded.append(_excluded(record, Exclusion.DUPLICATE_IMAGE, duplicate_of=original))
            continue
        kept.append(record)
    return kept, excluded


def _excluded(record: Record, reason: Exclusion, duplicate_of: str | None = None) -> Excluded:
    return Excluded(record.image_id, record.source, str(record.path), reason, duplicate_of, record.line, record.detail)
