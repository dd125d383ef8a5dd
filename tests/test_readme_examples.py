"""The README's quickstart paragraph and evaluation excerpt are exactly what `scripts/evaluation_example.py`
renders from the committed `docs/evaluation/` files: no typed numbers, no README that drifted from its source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.quickstart_example import (
    EVALUATION_BLOCK,
    QUICKSTART_BLOCK,
    SUMMARY_FILE,
    render_evaluation_excerpt,
    render_quickstart,
    update_readme,
)
from benchmarks.readme_blocks import find_block, replace_block, wrap

REPO = Path(__file__).resolve().parents[1]

DOCS = REPO / "docs" / "evaluation"


def committed_summary() -> dict:
    return json.loads((DOCS / SUMMARY_FILE).read_text())


def test_readme_blocks_are_rendered_from_the_committed_example():
    readme = (REPO / "README.md").read_text()
    assert find_block(readme, QUICKSTART_BLOCK) == render_quickstart(committed_summary())
    assert find_block(readme, EVALUATION_BLOCK) == render_evaluation_excerpt((DOCS / "report.md").read_text())


def test_summary_figures_match_the_committed_evaluation_report():
    summary, report = committed_summary(), json.loads((DOCS / "report.json").read_text())
    assert summary["test_images"] == report["images"]
    for mode in ("knn", "ordinal", "prototype"):
        assert summary["test_qwk"][mode] == pytest.approx(report["modes"][mode]["qwk"], abs=1e-9)


def test_excerpt_keeps_the_mode_table_and_the_grade_set_table_only():
    block = render_evaluation_excerpt((DOCS / "report.md").read_text())
    assert "| zero_shot |" in block and "| ensemble |" in block and "**Conformal grade sets" in block
    assert not block.splitlines()[1].startswith("# ")  # the report's title stays in the report
    assert "- `zero_shot`:" not in block  # so does the list explaining each mode


def test_update_rewrites_only_the_marked_blocks(tmp_path):
    readme = tmp_path / "README.md"
    old = "\n\n".join(wrap(name, "x", "STALE") for name in (QUICKSTART_BLOCK, EVALUATION_BLOCK))
    readme.write_text(f"before\n\n{old}\n\nafter\n")
    assert update_readme(readme, DOCS) is True
    text = readme.read_text()
    assert text.startswith("before\n\n") and text.endswith("\n\nafter\n") and "STALE" not in text
    assert update_readme(readme, DOCS) is False
    with pytest.raises(ValueError, match="no '<!-- missing:start"):
        replace_block(readme, "missing", wrap("missing", "x", "new"))


def test_readme_flag_rate_table_is_rendered_from_the_committed_gradability_results():
    from benchmarks.gradability import README_BLOCK, render_readme_table

    summary = json.loads((REPO / "benchmarks" / "gradability.json").read_text())
    assert find_block((REPO / "README.md").read_text(), README_BLOCK) == render_readme_table(summary)


def test_example_card_describes_the_quickstart_training_data_and_calibration():
    """The committed card of the quickstart model (its corpus now writes a build report like a real build)."""
    card = (REPO / "model_card" / "example_quickstart.md").read_text()
    summary = committed_summary()
    assert f"| synthetic | {summary['train_images']} |" in card
    assert "build report was not available" not in card
    assert f"{summary['calibration']['ordinal_qwk_after']:.3f} after)" in card
