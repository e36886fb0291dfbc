"""Names that attack: labels and paths with quotes, SQL, HTML, shell metacharacters, terminal escapes, very long and
non-UTF-8 names are stored and shown verbatim (escaped where shown), never executed; run ids cannot leave the
store. Real files, real Parquet, a real SQLite catalog (and PostgreSQL when a server is available)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.terminal import table_lines
from fusion_core.config import IngestConfig
from fusion_core.data.sources import iter_items
from fusion_core.stages.ingest import ingest_chunk
from fusion_core.stages.report.page import html_table
from fusion_core.stages.report.plots import plot_confusion_matrix, plot_embedding_map
from fusion_core.store import Store

HOSTILE = [
    "it's \"quoted\"",
    "'; DROP TABLE runs; --",
    "<img src=x onerror=alert('x')>",
    "$(touch PWNED) `touch PWNED` && rm -rf ~ | ; $HOME",
    "mean $x^2$ and a lone $ sign",
    "tab\there \x1b[31mred\x1b[0m",
    "l" * 255,
]
NOT_UTF8 = b"caf\xe9"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return Store(str(tmp_path / "store"))
    return Store(str(tmp_path / "store"), request.getfixturevalue("postgres_url"))


def test_hostile_folder_names_are_stored_verbatim_and_never_run(tmp_path, store, png, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    for i, name in enumerate(HOSTILE):
        (src / name).mkdir(parents=True)
        (src / name / f"{name[:40]}{i}.png").write_bytes(png(_pixels(i)))
    os.makedirs(os.fsencode(src) + b"/" + NOT_UTF8)
    Path(os.fsdecode(os.fsencode(src) + b"/" + NOT_UTF8 + b"/x\xff.png")).write_bytes(png(_pixels(99)))
    problems = []
    items = list(iter_items(str(src), problems))
    out = ingest_chunk(store.root, items, IngestConfig())
    assert problems == [] and out["quarantine"] == []

    rows = pq.read_table(Path(store.root) / out["shards"][0]["path"], columns=["label", "source"]).to_pylist()
    assert sorted(r["label"] for r in rows) == sorted(HOSTILE + ["caf\\xe9"])
    assert f"{src}/caf\\xe9/x\\xff.png" in {r["source"] for r in rows}
    run_id = store.start_run("ingest", {"source": str(src)})
    store.commit_version("images", [{k: s[k] for k in ("path", "num_rows", "checksum")} for s in out["shards"]],
                         run_id, sources=[{"image_id": i, "source": s} for i, s in out["sources"]])
    store.add_quarantine(run_id, [{"source": f"{src}/{HOSTILE[1]}/gone.png", "content_hash": "", "stage": "ingest",
                                   "error_class": "unreadable", "message": HOSTILE[3]}])
    assert {s for _, s in store.known_sources()} == {s for _, s in out["sources"]}
    assert store.quarantine_rows()[0]["message"] == HOSTILE[3]
    store.replace_results("predictions", run_id, [{"image_id": "a" * 64, "model_version": 1, "label": name,
                                                   "predicted": name, "confidence": 0.5} for name in HOSTILE[-1:]])
    assert store.query("predictions", run_id)[0]["predicted"] == "l" * 255
    assert store.list_runs()[0]["run_id"] == run_id  # the runs table is still there
    assert not list(tmp_path.rglob("PWNED")) and not Path.home().joinpath("PWNED").exists()


def test_hostile_labels_are_escaped_where_shown():
    page = html_table(["label"], [[name] for name in HOSTILE])
    assert "<img" not in page and "&lt;img src=x onerror=alert(&#x27;x&#x27;)&gt;" in page
    text = "\n".join(table_lines([{"label": name} for name in HOSTILE], ["label"], 10))
    assert "\x1b" not in text and "\\x1b[31mred" in text and "\t" not in text
    assert "'; DROP TABLE runs; --" in text and "l" * 255 in text
    assert plot_confusion_matrix([[1] * len(HOSTILE)] * len(HOSTILE), HOSTILE).startswith(b"\x89PNG")
    import numpy as np

    xy = np.random.default_rng(0).normal(size=(len(HOSTILE), 2))
    assert plot_embedding_map(xy, HOSTILE).startswith(b"\x89PNG")


@pytest.mark.parametrize("run_id", ["../../etc", "a/b", "", ".hidden", "x" * 41, "run\x00id", "$(id)"])
def test_run_ids_that_would_leave_the_store_are_refused(tmp_path, run_id):
    with pytest.raises(ValueError, match="use 1-40 letters, digits"):
        Store(str(tmp_path / "store")).start_run("ingest", {}, run_id=run_id)


def _pixels(seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8)
