"""The benchmark figures in the docs are those of bench/results/*.json, rendered by scripts/render_benchmarks.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("render_benchmarks", REPO / "scripts" / "render_benchmarks.py")
render_benchmarks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_benchmarks)


@pytest.mark.parametrize("doc", render_benchmarks.DOCUMENTS, ids=lambda p: p.name)
def test_each_document_shows_what_its_results_files_give(doc):
    text = doc.read_text()
    assert text == render_benchmarks.render(text), (
        f"{doc.name} differs from bench/results: run python scripts/render_benchmarks.py")


def test_every_results_file_is_shown_somewhere():
    shown = {m.group("name") for doc in render_benchmarks.DOCUMENTS
             for m in render_benchmarks.BLOCK.finditer(doc.read_text())}
    shown = {render_benchmarks.SOURCES.get(name, name) for name in shown}
    files = {p.stem for p in (REPO / "bench" / "results").glob("*.json")}
    assert files <= shown, f"results with no page: {sorted(files - shown)}"


def test_a_figure_edited_by_hand_is_caught():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    block = next(render_benchmarks.BLOCK.finditer(text))
    figure = next(tok for tok in block.group("body").split() if tok[:1].isdigit())
    tampered = text[:block.start("body")] + block.group("body").replace(figure, figure + "1", 1) + \
        text[block.end("body"):]
    assert render_benchmarks.render(tampered) == text != tampered


def test_a_results_file_records_when_where_and_at_which_commit(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    sys.modules.pop("record", None)
    import record

    monkeypatch.setattr(record, "RESULTS", tmp_path)
    path = record.write_results("example", {"figure": 1.5})
    data = json.loads(path.read_text())
    assert data["figure"] == 1.5 and data["commit"] != "" and data["date"].endswith("Z")
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu_model"] and isinstance(data["idle"], bool)
    assert "Measured " in render_benchmarks.measured(data)
