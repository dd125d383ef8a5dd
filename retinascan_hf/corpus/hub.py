"""Publishing a built corpus to the Hub with a dataset card that states its counts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from .report import REPORT_FILE, BuildReport, Table
from .schema import ICDR_LABELS

_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def markdown_table(table: Table) -> str:
    """GitHub-flavoured Markdown rendering of a report table, for the card."""
    header, rows = table
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def card_text(report: BuildReport, repo_id: str) -> str:
    """The card's Markdown body: provenance, protocol, per-split counts, exclusions, licence."""
    grades = ", ".join(f"{grade} {name}" for grade, name in enumerate(ICDR_LABELS))
    return f"""
# Merged diabetic retinopathy corpus

Built with `retinascan data build` from {len(report.sources)} source(s): {", ".join(report.sources)}.
{report.num_kept} images kept. Protocol `{report.protocol}`, seed {report.seed}, validation ratio
{report.val_ratio}, test ratio {report.test_ratio}. No patient appears in two splits.

Columns: `image`, `grade` (ICDR: {grades}), `source`, `image_id` (unique), `patient_id`, `eye`.

## Images per source, split and grade

{markdown_table(report.split_table())}

## Data quality

Rows each source listed, rows kept, and rows excluded per reason (ungradable or out-of-range
labels, malformed rows, missing, unreadable, oversized or truncated files, repeated ids, byte-identical
duplicates of an image kept from another row). Every exclusion is itemised in `{REPORT_FILE}`, malformed
rows with their line number.

{markdown_table(report.source_table())}
{_warnings_section(report)}
## Licence

The images stay under the terms of the data sets they come from; check that those terms allow
the use you intend (several public DR sets forbid redistribution).

## Usage

```python
from datasets import load_dataset

corpus = load_dataset("{repo_id}")
```
"""


def _warnings_section(report: BuildReport) -> str:
    """The build's warnings (too-small splits...) as a Markdown section, or nothing when there are none."""
    if not report.warnings:
        return ""
    return "\n## Warnings\n\n" + "\n".join(f"- {warning}" for warning in report.warnings) + "\n"


def corpus_card(report: BuildReport, repo_id: str, metadata: Mapping[str, Any] | None = None) -> DatasetCard:
    """Dataset card for ``report``; ``metadata`` (e.g. the YAML ``push_to_hub`` wrote) is kept."""
    size = next((label for limit, label in _SIZE_CATEGORIES if report.num_kept < limit), "n>1M")
    data = DatasetCardData(
        **{
            **(metadata or {}),
            "pretty_name": "Merged diabetic retinopathy corpus",
            "license": "other",
            "task_categories": ["image-classification"],
            "size_categories": [size],
            "tags": ["medical", "ophthalmology", "diabetic-retinopathy", "fundus"],
        }
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{card_text(report, repo_id)}")


def push_corpus(
    corpus_dir: Path, report: BuildReport, repo_id: str, *, private: bool = True, token: str | None = None
) -> None:
    """Upload the corpus (image bytes embedded), then its card and ``build_report.json``.

    ``DatasetDict.push_to_hub`` writes a README whose YAML maps data files to splits; the card
    keeps that YAML and replaces only the body, so the Hub keeps loading the splits correctly.
    """
    datasets.load_from_disk(str(corpus_dir)).push_to_hub(repo_id, private=private, token=token)
    existing = DatasetCard.load(repo_id, repo_type="dataset", token=token)
    corpus_card(report, repo_id, existing.data.to_dict()).push_to_hub(
        repo_id, repo_type="dataset", token=token, commit_message="Dataset card with build counts"
    )
    HfApi(token=token).upload_file(
        path_or_fileobj=corpus_dir / REPORT_FILE, path_in_repo=REPORT_FILE, repo_id=repo_id, repo_type="dataset"
    )
