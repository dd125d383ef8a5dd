"""The dataset card text and the push sequence, offline (the Hub calls are replaced)."""

from __future__ import annotations

from pathlib import Path

import datasets
import huggingface_hub
import pytest
from corpus_layouts import OK, aptos_layout, messidor2_layout

from retinascan_hf.corpus import REPORT_FILE, BuildReport, build_corpus, corpus_card, push_corpus

HUB_CONFIGS = {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildReport, Path]:
    root = tmp_path_factory.mktemp("published")
    sources = {
        "aptos": aptos_layout(root / "aptos", [(f"a{index}", index % 5, OK) for index in range(20)]),
        "messidor2": messidor2_layout(
            root / "messidor2", [(f"m{index}.png", index % 5, int(index > 0), OK) for index in range(10)]
        ),
    }
    out = root / "corpus"
    return build_corpus(sources, out, progress=False), out


def test_card_states_counts_protocol_and_keeps_existing_metadata(built: tuple[BuildReport, Path]) -> None:
    report, _ = built
    card = corpus_card(report, "someone/dr", metadata=HUB_CONFIGS)
    metadata = card.data.to_dict()
    assert metadata["configs"] == HUB_CONFIGS["configs"]
    assert metadata["task_categories"] == ["image-classification"] and metadata["size_categories"] == ["n<1K"]
    text = card.text
    assert "Protocol `merged`, seed 0" in text and "29 images kept" in text
    assert "| source | split | No DR | Mild NPDR | Moderate NPDR | Severe NPDR | Proliferative DR | total |" in text
    for row in report.split_table()[1]:
        assert "| " + " | ".join(map(str, row)) + " |" in text
    assert "| messidor2 | 10 | 9 | 1 |" in text  # found, kept, ungradable
    assert 'load_dataset("someone/dr")' in text
    assert huggingface_hub.DatasetCard(str(card)).text == text  # round-trips through README.md form


def test_push_uploads_corpus_then_card_over_the_hub_yaml_then_report(
    built: tuple[BuildReport, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    report, out = built
    calls: list[tuple] = []
    monkeypatch.setattr(
        datasets.DatasetDict,
        "push_to_hub",
        lambda self, repo_id, **kw: calls.append(("data", repo_id, kw, self.num_rows)),
    )
    monkeypatch.setattr(
        huggingface_hub.DatasetCard,
        "load",
        classmethod(
            lambda cls, repo_id, **kw: cls(
                f"---\n{huggingface_hub.DatasetCardData(**HUB_CONFIGS).to_yaml()}\n---\nauto"
            )
        ),
    )
    monkeypatch.setattr(
        huggingface_hub.DatasetCard,
        "push_to_hub",
        lambda self, repo_id, **kw: calls.append(("card", repo_id, self.data.to_dict())),
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "upload_file",
        lambda self, **kw: calls.append(("report", kw["repo_id"], kw["path_in_repo"])),
    )
    push_corpus(out, report, "someone/dr", private=True)
    assert [call[0] for call in calls] == ["data", "card", "report"]
    assert calls[0][2]["private"] is True and sum(calls[0][3].values()) == 29
    assert calls[1][2]["configs"] == HUB_CONFIGS["configs"] and calls[1][2]["license"] == "other"
    assert calls[2] == ("report", "someone/dr", REPORT_FILE)
