"""Tests for fusion_core.store (SQLite catalog under a temporary folder) and fusion_core.data.runs."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from flows.terminal import describe_run
from fusion_core.data.runs import StageResult, record_stage
from fusion_core.store import Store, new_run_id, tables, to_json
from fusion_core.store.migrations import migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The catalog on SQLite, and on a real PostgreSQL server when one is available."""
    if request.param == "sqlite":
        return Store(str(tmp_path / "store"))
    return Store(str(tmp_path / "store"), request.getfixturevalue("postgres_url"))


# construction -----------------------------------------------------------------

def test_store_creates_sqlite_catalog_under_root(tmp_path):
    s = Store(str(tmp_path / "a" / "b"))
    assert s.root == str((tmp_path / "a" / "b").resolve())
    assert (tmp_path / "a" / "b" / "catalog.db").is_file()
    assert s.engine.dialect.name == "sqlite"
    assert s.path("datasets", "images") == f"{s.root}/datasets/images"


def test_store_reopens_existing_catalog(tmp_path):
    root = str(tmp_path / "store")
    run_id = Store(root).start_run("ingest", {"x": 1})
    again = Store(root)
    assert again.get_run(run_id)["params"] == {"x": 1}
    with again.engine.connect() as conn:
        rows = conn.execute(sa.select(tables.meta)).all()
    assert [tuple(r) for r in rows] == [("schema_version", str(tables.SCHEMA_VERSION))]


def test_a_process_migrates_a_catalog_once(tmp_path, monkeypatch):
    from fusion_core.store import catalog

    calls = []
    monkeypatch.setattr(catalog, "migrate", lambda engine: calls.append(engine.url) or migrate(engine))
    root = tmp_path / "store"
    Store(str(root))
    Store(str(root)).start_run("ingest", {})
    assert len(calls) == 1  # the second opening found the catalog already migrated by this process
    shutil.rmtree(root)
    Store(str(root)).start_run("ingest", {})  # a new file at the same place is created again
    assert len(calls) == 2


def test_store_uri_root_requires_db():
    with pytest.raises(ValueError, match="store.db"):
        Store("s3://bucket/fusion")


def test_from_settings_uses_settings_root(settings):
    s = Store.from_settings(settings)
    assert Path(s.root) == Path(settings.store.root).resolve()
    assert (Path(settings.store.root) / "catalog.db").is_file()


# runs and stages ------------------------------------------------------------------

def test_new_run_id_format_and_uniqueness():
    ids = [new_run_id() for _ in range(200)]
    assert len(set(ids)) == 200
    for run_id in ids:
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id), run_id
        assert len(run_id) <= 40
    # the time prefix is the current UTC time, so ids sort by creation second
    stamp = dt.datetime.strptime(ids[0][:15], "%Y%m%d-%H%M%S")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert abs((now - stamp).total_seconds()) < 60
    assert sorted(i[:15] for i in ids) == [i[:15] for i in ids]


def test_run_lifecycle(store):
    run_id = store.start_run("pipeline", {"profile": "smoke", "n": 3})
    run = store.get_run(run_id)
    assert run["flow"] == "pipeline"
    assert run["status"] == "running"
    assert run["params"] == {"profile": "smoke", "n": 3}
    assert run["finished_at"] is None
    assert run["summary"] is None
    assert run["stages"] == []

    store.finish_run(run_id, "completed", {"images": 5})
    run = store.get_run(run_id)
    assert run["status"] == "completed"
    assert run["summary"] == {"images": 5}
    assert isinstance(run["finished_at"], dt.datetime)
    assert run["finished_at"] >= run["started_at"]


def test_start_run_with_explicit_id(store):
    assert store.start_run("ingest", {}, run_id="my-run") == "my-run"
    assert store.get_run("my-run")["flow"] == "ingest"


def test_get_run_unknown_is_none(store):
    assert store.get_run("nope") is None


def test_stages_recorded_in_start_order(store):
    run_id = store.start_run("pipeline", {})
    store.start_stage(run_id, "ingest")
    store.finish_stage(run_id, "ingest", "completed", counts={"files": 4}, metrics={"seconds": 1.5},
                       outputs={"version": 1})
    store.start_stage(run_id, "preprocess")
    store.finish_stage(run_id, "preprocess", "failed", error="RuntimeError: boom")

    stages = store.get_run(run_id)["stages"]
    assert [s["stage"] for s in stages] == ["ingest", "preprocess"]
    ingest, pre = stages
    assert (ingest["status"], ingest["counts"], ingest["metrics"], ingest["outputs"], ingest["error"]) == \
        ("completed", {"files": 4}, {"seconds": 1.5}, {"version": 1}, None)
    assert ingest["finished_at"] is not None
    assert (pre["status"], pre["counts"], pre["error"]) == ("failed", None, "RuntimeError: boom")


def test_restarting_a_stage_resets_it(store):
    run_id = store.start_run("pipeline", {})
    store.start_stage(run_id, "train")
    store.finish_stage(run_id, "train", "failed", error="x")
    store.start_stage(run_id, "train")
    stages = store.get_run(run_id)["stages"]
    assert len(stages) == 1
    assert stages[0]["status"] == "running"
    assert stages[0]["error"] is None
    assert stages[0]["finished_at"] is None


def test_list_runs_newest_first_and_limit(store):
    ids = [store.start_run("f", {"i": i}) for i in range(4)]
    listed = store.list_runs()
    assert [r["run_id"] for r in listed] == ids[::-1]
    assert [r["run_id"] for r in store.list_runs(limit=2)] == ids[:1:-1]
    assert "stages" not in listed[0]


# dataset versions -------------------------------------------------------------------

def test_commit_version_numbers_per_dataset(store):
    assert store.latest_version("images") is None
    assert store.commit_version("images", [{"path": "a.parquet", "num_rows": 2, "checksum": "-"}], "r1") == 1
    assert store.commit_version("images", [{"path": "b.parquet", "num_rows": 3, "checksum": "-"}], "r2") == 2
    assert store.commit_version("pixels", [{"path": "p.parquet", "num_rows": 5, "checksum": "-"}], "r2") == 1
    assert store.commit_version("images", [], "r3") == 3
    latest = store.latest_version("images")
    assert latest["version"] == 3
    assert latest["num_rows"] == 0
    assert latest["shards"] == []
    assert store.latest_version("pixels")["version"] == 1


def test_latest_version_shards_sorted_and_summed(store):
    shards = [{"path": "datasets/images/c.parquet", "num_rows": 1, "checksum": "-"},
              {"path": "datasets/images/a.parquet", "num_rows": 10, "checksum": "-"},
              {"path": "datasets/images/b.parquet", "num_rows": 100, "checksum": "-"}]
    store.commit_version("images", shards, "run-1", info={"source": "/data"})
    latest = store.latest_version("images")
    assert latest["dataset"] == "images"
    assert latest["version"] == 1
    assert latest["run_id"] == "run-1"
    assert latest["num_rows"] == 111
    assert latest["info"] == {"source": "/data"}
    assert latest["key"] is None
    assert latest["shards"] == sorted(shards, key=lambda s: s["path"])


def test_find_version_by_key(store):
    store.commit_version("pixels", [{"path": "k1.parquet", "num_rows": 1, "checksum": "-"}], "r1", key="images:1:abc")
    store.commit_version("pixels", [{"path": "k2.parquet", "num_rows": 2, "checksum": "-"}], "r2", key="images:2:abc")
    store.commit_version("pixels", [{"path": "k1b.parquet", "num_rows": 3, "checksum": "-"}], "r3", key="images:1:abc")
    found = store.find_version("pixels", "images:1:abc")
    assert found["version"] == 3
    assert found["shards"] == [{"path": "k1b.parquet", "num_rows": 3, "checksum": "-"}]
    assert store.find_version("pixels", "images:2:abc")["version"] == 2
    assert store.find_version("pixels", "images:9:abc") is None
    assert store.find_version("images", "images:1:abc") is None


def test_commit_version_records_sources(store):
    assert store.known_sources() == set()
    sources = [{"image_id": "aa", "source": "/x/1.png"}, {"image_id": "bb", "source": "/x/2.png"},
               {"image_id": "aa", "source": "/x/copy-of-1.png"}]
    store.commit_version("images", [{"path": "s.parquet", "num_rows": 2, "checksum": "-"}], "r1", sources=sources)
    assert store.known_sources() == {("aa", "/x/1.png"), ("bb", "/x/2.png"), ("aa", "/x/copy-of-1.png")}


def test_record_sources_dedups(store):
    store.commit_version("images", [], "r1", sources=[{"image_id": "aa", "source": "/x/1.png"}])
    added = store.record_sources([{"image_id": "aa", "source": "/x/1.png"},      # already stored
                                  {"image_id": "aa", "source": "/y/1.png"},      # new
                                  {"image_id": "aa", "source": "/y/1.png"}],     # repeated in batch
                                 "r2")
    assert added == 1
    assert store.record_sources([{"image_id": "aa", "source": "/y/1.png"}], "r3") == 0
    assert store.record_sources([], "r3") == 0
    assert store.known_sources() == {("aa", "/x/1.png"), ("aa", "/y/1.png")}


# quarantine ---------------------------------------------------------------------------

def _qrow(source="/x/bad.png", content_hash="h1", stage="ingest", error_class="decode_error"):
    return {"source": source, "content_hash": content_hash, "stage": stage,
            "error_class": error_class, "message": "boom"}


def test_add_quarantine_counts_new_rows_only(store):
    rows = [_qrow(), _qrow(source="/x/other.png"), _qrow(stage="preprocess")]
    assert store.add_quarantine("r1", rows) == 3
    assert store.add_quarantine("r2", rows) == 0
    assert store.add_quarantine("r2", [_qrow(content_hash="h2"), _qrow(content_hash="h2")]) == 1
    assert store.add_quarantine("r2", []) == 0
    all_rows = store.quarantine_rows()
    assert len(all_rows) == 4
    assert [r["run_id"] for r in all_rows] == ["r1", "r1", "r1", "r2"]
    assert [r["content_hash"] for r in store.quarantine_rows("r2")] == ["h2"]
    first = all_rows[0]
    assert (first["source"], first["stage"], first["error_class"], first["message"]) == \
        ("/x/bad.png", "ingest", "decode_error", "boom")
    assert isinstance(first["created_at"], dt.datetime)


# models ---------------------------------------------------------------------------------

def _register(store, key, run_id="r1"):
    return store.register_model(run_id, "cnn", f"models/{key}", key, 1, {"accuracy": 0.5}, {"lr": 0.01})


def test_register_model_is_challenger(store):
    v1 = _register(store, "k1")
    v2 = _register(store, "k2")
    assert (v1, v2) == (1, 2)
    model = store.get_model(v1)
    assert model["stage"] == "challenger"
    assert (model["name"], model["path"], model["key"], model["dataset_version"]) == \
        ("cnn", store.path("models/k1"), "k1", 1)  # kept relative to the root, found under the root it opens at
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT path FROM models WHERE version = 1")).scalar() == "models/k1"
    assert model["metrics"] == {"accuracy": 0.5}
    assert model["config"] == {"lr": 0.01}
    assert store.champion() is None
    assert store.get_model(99) is None


def test_set_champion_archives_previous(store):
    v1, v2, v3 = _register(store, "k1"), _register(store, "k2"), _register(store, "k3")
    store.set_champion(v1, reason="test")
    assert store.champion()["version"] == v1
    store.set_champion(v2, reason="test")
    assert store.champion()["version"] == v2
    assert [m["stage"] for m in store.list_models()] == ["archived", "champion", "challenger"]
    store.set_champion(v3, reason="test")
    stages = {m["version"]: m["stage"] for m in store.list_models()}
    assert stages == {v1: "archived", v2: "archived", v3: "champion"}
    assert sum(s == "champion" for s in stages.values()) == 1


def test_find_model_by_key_newest(store):
    _register(store, "k1")
    _register(store, "k2")
    v3 = _register(store, "k1", run_id="r9")
    found = store.find_model("k1")
    assert found["version"] == v3
    assert found["run_id"] == "r9"
    assert store.find_model("missing") is None


# results ---------------------------------------------------------------------------------

def test_replace_results_replaces_only_that_run(store):
    first = [{"image_id": "a", "cluster": 0, "distance": 0.5},
             {"image_id": "b", "cluster": 1, "distance": 0.25}]
    store.replace_results("cluster_assignments", "r1", first)
    store.replace_results("cluster_assignments", "r2", [{"image_id": "z", "cluster": 3, "distance": 1.0}])
    store.replace_results("cluster_assignments", "r1", first)
    rows = sorted(store.query("cluster_assignments", "r1"), key=lambda r: r["image_id"])
    assert rows == [{"run_id": "r1", **r} for r in first]

    second = [{"image_id": "c", "cluster": 2, "distance": 0.0}]
    store.replace_results("cluster_assignments", "r1", second)
    assert store.query("cluster_assignments", "r1") == [{"run_id": "r1", **second[0]}]
    assert store.query("cluster_assignments", "r2") == [
        {"run_id": "r2", "image_id": "z", "cluster": 3, "distance": 1.0}]

    store.replace_results("cluster_assignments", "r1", [])
    assert store.query("cluster_assignments", "r1") == []


def test_replace_results_predictions_and_summaries(store):
    preds = [{"image_id": f"id{i}", "model_version": 1, "label": "cat" if i % 2 else None,
              "predicted": "dog", "confidence": 0.75, "split": "test", "top_k": ["dog", "cat"]} for i in range(3)]
    store.replace_results("predictions", "r1", preds)
    store.replace_results("predictions", "r1", preds)
    rows = sorted(store.query("predictions", "r1"), key=lambda r: r["image_id"])
    assert rows == [{"run_id": "r1", **p} for p in preds]

    summaries = [{"cluster": 0, "size": 2, "top_label": "cat", "purity": 1.0, "top_labels": {"cat": 2},
                  "exemplars": ["id1"], "outliers": ["id0"]},
                 {"cluster": 1, "size": 1, "top_label": None, "purity": None, "top_labels": None,
                  "exemplars": None, "outliers": None}]
    store.replace_results("cluster_summaries", "r1", summaries)
    store.replace_results("cluster_summaries", "r1", summaries)
    got = sorted(store.query("cluster_summaries", "r1"), key=lambda r: r["cluster"])
    assert got == [{"run_id": "r1", **s} for s in summaries]


def test_replace_results_more_than_one_batch(store):
    rows = [{"image_id": f"{i:05d}", "cluster": i % 3, "distance": 0.0} for i in range(5001)]
    store.replace_results("cluster_assignments", "big", rows)
    store.replace_results("cluster_assignments", "big", rows)
    assert len(store.query("cluster_assignments", "big")) == 5001


# to_json, StageResult, record_stage ----------------------------------------------------------

def test_select_results_filters_by_path_glob_in_sql(store):
    sources = [("a" * 64, "/data/cats/100%_sure.png"), ("b" * 64, "/data/cats/x.png"), ("c" * 64, "/data/Cats/y.png"),
               ("b" * 64, "/mirror/b.png")]
    store.record_sources([{"image_id": i, "source": s} for i, s in sources], "r")
    store.replace_results("predictions", "r", [{"image_id": i * 64, "model_version": 1, "predicted": "cat",
                                                "confidence": c} for i, c in (("a", 0.9), ("b", 0.8), ("c", 0.7))])

    def ids(**kw):
        return [r["image_id"][0] for r in store.select_results("predictions", "r", order_by=("-confidence",), **kw)]

    assert ids(path_glob="/data/cats/*") == ["a", "b"]  # case-sensitive on both databases
    assert ids(path_glob="*/100%_sure.png") == ["a"] and ids(path_glob="*/100%_sur?.png") == ["a"]
    assert ids(path_glob="*/1_0%*") == [] and ids(path_glob="/mirror/*") == ["b"]
    assert ids(at_least={"confidence": 0.75}, limit=1) == ["a"]
    assert store.sources_of(["b" * 64, "z" * 64]) == {"b" * 64: ["/data/cats/x.png", "/mirror/b.png"]}


def test_find_run_takes_latest_and_suggests_the_closest_id(store):
    first = store.start_run("nightly", {}, run_id="20261130-020000-aaaaaa")
    store.start_stage(first, "infer")
    store.finish_stage(first, "infer", "completed")
    store.finish_run(first, "completed")
    second = store.start_run("train", {}, run_id="20261130-030000-bbbbbb")
    assert store.find_run("latest")["run_id"] == second
    assert store.find_run("latest", "infer")["run_id"] == first
    with pytest.raises(LookupError, match="did you mean 20261130-020000-aaaaaa"):
        store.find_run("20261130-020000-aaaaab")
    with pytest.raises(LookupError, match="did you mean 20261130-030000-bbbbbb"):
        store.find_run("20261130-03")
    with pytest.raises(LookupError, match="has no completed infer stage"):
        store.find_run(second, "infer")
    with pytest.raises(LookupError, match="no run with a completed cluster stage"):
        store.find_run("latest", "cluster")


def test_open_existing_never_creates_a_store(tmp_path, postgres_url):
    from fusion_core.config import load_settings
    from fusion_core.store import StoreNotFoundError

    for db in (None, postgres_url):
        settings = load_settings(None, {"store.root": str(tmp_path / "none"), "store.db": db})
        with pytest.raises(StoreNotFoundError, match="no Fusion store at"):
            Store.open_existing(settings)
        Store.from_settings(settings)
        assert Store.open_existing(settings).list_runs() == []


def test_to_json_converts_numpy_scalars():
    out = to_json({"a": np.float32(0.5), "b": np.int64(3), "c": [np.bool_(True)], "d": "x"})
    assert out == {"a": 0.5, "b": 3, "c": [True], "d": "x"}
    assert type(out["a"]) is float and type(out["b"]) is int and type(out["c"][0]) is bool


def test_stage_result_as_dict():
    result = StageResult("ingest", counts={"files": np.int64(2)})
    assert result.as_dict() == {"stage": "ingest", "counts": {"files": 2}, "metrics": {}, "outputs": {}}


def test_record_stage_success(store):
    run_id = store.start_run("pipeline", {})
    out = record_stage(store, run_id, "ingest",
                       lambda: StageResult("ingest", counts={"files": np.int64(3)},
                                           metrics={"acc": np.float32(0.5)}, outputs={"version": 1}))
    assert out["counts"] == {"files": 3}
    assert out["metrics"]["acc"] == 0.5
    assert set(out["metrics"]) == {"acc", "seconds"}
    (stage,) = store.get_run(run_id)["stages"]
    assert 0 <= out["metrics"]["seconds"] <= (stage["finished_at"] - stage["started_at"]).total_seconds() + 1
    assert stage["status"] == "completed"
    assert stage["counts"] == {"files": 3}
    assert stage["metrics"] == out["metrics"]
    assert stage["outputs"] == {"version": 1}
    assert stage["error"] is None


def test_record_stage_failure_is_recorded_and_reraised(store):
    run_id = store.start_run("pipeline", {})

    def boom():
        raise RuntimeError("no images")

    with pytest.raises(RuntimeError, match="no images"):
        record_stage(store, run_id, "preprocess", boom)
    (stage,) = store.get_run(run_id)["stages"]
    assert stage["status"] == "failed"
    assert stage["error"] == "RuntimeError: no images"
    assert stage["counts"] is None


def test_describe_run_mentions_stages_and_hides_confusion_matrix(store):
    run_id = store.start_run("pipeline", {})
    record_stage(store, run_id, "train", lambda: StageResult(
        "train", counts={"images": 10}, metrics={"accuracy": 0.123456, "confusion_matrix": [[1]]}))
    store.finish_run(run_id, "completed")
    text = describe_run(store.get_run(run_id), store)
    lines = text.splitlines()
    assert lines[0].startswith(f"Run {run_id} (pipeline): completed in ")
    assert "  train       completed" in lines
    assert "images=10" in text
    assert "accuracy=0.1235" in text
    assert "confusion_matrix" not in text
    assert f"store root   {store.root}" in text
    compact = describe_run(store.get_run(run_id), store, compact=True).splitlines()
    (train,) = [line for line in compact if line.startswith("  train ")]
    assert re.fullmatch(r"  train\s+completed\s+\d+\.\d s  images=10", train), train
    assert len(compact) == len(lines) - 2  # its counts and metrics lines folded into it


# migrations, concurrency, credentials ------------------------------------------

def test_catalog_from_schema_version_1_is_migrated(tmp_path):
    import sqlalchemy as sa

    root = tmp_path / "old"
    root.mkdir()
    engine = sa.create_engine(f"sqlite:///{root / 'catalog.db'}")
    tables.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_predictions_image_id"))
        conn.execute(tables.meta.insert().values(key="schema_version", value="1"))
    assert migrate(engine) == 1
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("predictions")}
    assert "ix_predictions_image_id" in names
    assert migrate(engine) == tables.SCHEMA_VERSION  # idempotent


def test_concurrent_writers_never_collide(store):
    from concurrent.futures import ThreadPoolExecutor

    def commit(i):
        run_id = f"run-{i}"
        store.replace_results("predictions", run_id, [
            {"image_id": f"img{j}", "model_version": 1, "label": None, "predicted": "a",
             "confidence": 0.5, "split": "test"} for j in range(50)])
        return store.commit_version("images", [{"path": f"s{i}.parquet", "num_rows": 1, "checksum": "-"}], run_id)

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(commit, range(8)))
    assert sorted(versions) == list(range(1, 9))
    for i in range(8):
        assert len(store.query("predictions", f"run-{i}")) == 50


def test_database_password_is_never_stored_or_shown(postgres_url, tmp_path):
    secret = sa_password(postgres_url)
    store = Store(str(tmp_path / "store"), postgres_url)
    run_id = store.start_run("nightly", {"overrides": {"store.db": postgres_url}})
    store.finish_run(run_id, "completed")
    run = store.get_run(run_id)
    assert secret not in str(run["params"]) and "***" in run["params"]["overrides"]["store.db"]
    assert secret not in describe_run(run, store)


def sa_password(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).password
