"""`fusion fsck`: a hand-built store (real Parquet shards, a real SQLite catalog) is found consistent; each kind of
damage is found; `--repair` moves orphans into lost+found and nothing the catalog names; a store copied elsewhere,
the original gone, is the same store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from fusion_core.data.runs import StageResult, record_stage
from fusion_core.learning.registry import publish_model
from fusion_core.store import Store
from fusion_core.store.datasets import IMAGES_SCHEMA, array_to_pixels, pixels_schema, write_shard
from fusion_core.store.tables import dataset_shards
from fusion_core.tools.fsck import check_store

ROWS = 6


def _images(seed: int) -> pa.Table:
    ids = [f"{seed:02d}{i:062x}" for i in range(ROWS)]
    return pa.table({"image_id": ids, "source": [f"/data/{i}.png" for i in ids], "label": ["cat"] * ROWS,
                     "split": ["train"] * ROWS, "height": pa.array([2] * ROWS, pa.int32()),
                     "width": pa.array([2] * ROWS, pa.int32()), "channels": pa.array([3] * ROWS, pa.int8()),
                     "pixels": [bytes(12)] * ROWS, "mask": pa.nulls(ROWS, pa.binary())}, schema=IMAGES_SCHEMA)


def _pixels(seed: int) -> pa.Table:
    ids = [f"{seed:02d}{i:062x}" for i in range(ROWS)]
    return pa.table({"image_id": ids, "label": ["cat"] * ROWS, "split": ["train"] * ROWS,
                     "pixels": array_to_pixels(np.zeros((ROWS, 2, 2, 3), np.uint8)),
                     "imputed_fraction": pa.array([0.0] * ROWS, pa.float32()),
                     "impute_method": pa.nulls(ROWS, pa.string())}, schema=pixels_schema(2, 2, 3))


@pytest.fixture
def built(tmp_path) -> Store:
    """One completed run: two images shards, a pixels shard, a model, a report and prediction rows."""
    return _build(Store(str(tmp_path / "store")), tmp_path)


def _build(store: Store, tmp_path: Path) -> Store:
    run_id = store.start_run("nightly", {}, run_id="run-1")
    images = store.commit_version("images", [write_shard(store.root, f"datasets/images/i{k}.parquet", _images(k))
                                             for k in (1, 2)], run_id)
    pixels = store.commit_version("pixels", [write_shard(store.root, "datasets/pixels/p1.parquet", _pixels(1))],
                                  run_id, info={"images_version": images, "shape": [2, 2, 3]})
    local_model = tmp_path / "m.keras"
    local_model.write_bytes(b"model")
    model = store.register_model(run_id, "cnn", publish_model(store, str(local_model), ["cat"], run_id), "k",
                                 pixels, {"accuracy": 1.0}, {})
    report = Path(store.root, "reports", run_id, "index.html")
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>")
    record_stage(store, run_id, "report", lambda: StageResult("report", outputs={"report": str(report)}))
    store.replace_results("predictions", run_id, [{"image_id": "a" * 64, "model_version": model, "predicted": "cat",
                                                   "confidence": 0.9}])
    store.finish_run(run_id, "completed")
    return store


def test_a_consistent_store_is_clean(built):
    result = check_store(built)
    assert result.findings == [] and result.unchecked == []
    assert result.shards == 3
    assert result.summary().startswith("fsck: clean: 3 shards checked, 0 orphan files")


@pytest.mark.parametrize("damage, kind", [
    (lambda root: (root / "datasets/images/i1.parquet").unlink(), "missing"),
    (lambda root: write_shard(str(root), "datasets/images/i1.parquet", _images(1).slice(0, 2)), "rows"),
    (lambda root: write_shard(str(root), "datasets/images/i1.parquet", _images(9)), "checksum"),
    (lambda root: (root / "datasets/pixels/p1.parquet").write_bytes(b"PAR1 not parquet"), "schema"),
    (lambda root: (root / "models/run-1/model.keras").unlink(), "model"),
    (lambda root: (root / "reports/run-1/index.html").unlink(), "report"),
])
def test_each_kind_of_damage_is_found(built, damage, kind):
    damage(Path(built.root))
    result = check_store(built)
    assert [f.kind for f in result.errors] == [kind], result.findings


def test_a_shard_with_another_schema_is_found(built):
    """Same rows and a recorded checksum that matches, but the columns of another dataset."""
    path = "datasets/pixels/p1.parquet"
    entry = write_shard(built.root, path, _images(1))
    with built.engine.begin() as conn:
        conn.execute(dataset_shards.update().where(dataset_shards.c.path == path).values(checksum=entry["checksum"]))
    assert [(f.kind, "a images shard, listed as pixels" in f.detail) for f in check_store(built).errors] == [
        ("schema", True)]


def test_result_rows_pointing_at_missing_runs_or_models_are_found(built):
    built.replace_results("predictions", "run-gone", [{"image_id": "b" * 64, "model_version": 99,
                                                       "predicted": "cat", "confidence": 0.5}])
    details = sorted(f.detail for f in check_store(built).errors)
    assert details == ["rows of model_version 99, which the catalog lacks", "rows of run_id run-gone, which the "
                                                                            "catalog lacks"]


def test_repair_moves_orphans_to_lost_found_and_nothing_committed(built):
    root = Path(built.root)
    write_shard(built.root, "datasets/pixels/never-committed.parquet", _pixels(3))
    (root / "datasets/images/i3.parquet.tmp-1234abcd").write_bytes(b"half")
    (root / "datasets/pixels/_current-7").mkdir(parents=True)
    (root / "datasets/pixels/_current-7/p1.parquet").write_bytes(b"x")
    (root / "models/unregistered").mkdir()
    (root / "models/unregistered/model.keras").write_bytes(b"x")
    (root / "reports/run-unknown").mkdir()
    (root / "reports/run-unknown/index.html").write_text("x")
    committed = {p: p.read_bytes() for p in root.rglob("*.parquet") if "never" not in p.name and "_current" not in
                 str(p)}

    found = check_store(built)
    assert found.errors == [] and len(found.orphans) == 5
    assert {Path(f.path).name for f in found.orphans} == {"never-committed.parquet", "i3.parquet.tmp-1234abcd",
                                                          "p1.parquet", "model.keras", "index.html"}
    repaired = check_store(built, repair=True)
    assert repaired.repaired["orphans_moved"] == 5
    assert {p: p.read_bytes() for p in committed} == committed
    assert (root / "models/run-1/model.keras").exists() and (root / "reports/run-1/index.html").exists()
    again = check_store(built)
    assert again.findings == []
    lost = Path(repaired.repaired["lost_found"])
    assert lost.parent == root / "lost+found"
    assert sorted(str(p.relative_to(lost)) for p in lost.rglob("*") if p.is_file()) == [
        "datasets/images/i3.parquet.tmp-1234abcd", "datasets/pixels/_current-7/p1.parquet",
        "datasets/pixels/never-committed.parquet", "models/unregistered/model.keras", "reports/run-unknown/index.html"]
    assert (lost / "models/unregistered/model.keras").read_bytes() == b"x"  # restorable as it was

    from fusion_core.tools.fsck import empty_lost_found
    assert len(empty_lost_found(built)) == 5 and not (root / "lost+found").exists()


def _relocated(built: Store, tmp_path: Path, db_url: str | None = None) -> Store:
    """``built`` copied as ``cp -a`` would once nothing has it open, to another path with the original deleted,
    opened there (on the same catalog database when it is not the store's SQLite file)."""
    copy = tmp_path / "elsewhere" / "restored"
    built.engine.dispose()
    shutil.copytree(built.root, copy)
    shutil.rmtree(built.root)
    return Store(str(copy), db_url)


@pytest.mark.parametrize("catalog", ["sqlite", "postgresql"])
def test_a_copied_store_with_the_original_gone_is_the_same_store(catalog, tmp_path, request):
    db_url = request.getfixturevalue("postgres_url") if catalog == "postgresql" else None
    moved = _relocated(_build(Store(str(tmp_path / "store"), db_url), tmp_path), tmp_path, db_url)
    result = check_store(moved)
    assert result.findings == [], result.findings
    champion_path = moved.get_model(1)["path"]
    assert champion_path == f"{moved.root}/models/run-1/model.keras" and Path(champion_path).read_bytes() == b"model"
    report = next(s for s in moved.get_run("run-1")["stages"] if s["stage"] == "report")["outputs"]["report"]
    assert report == f"{moved.root}/reports/run-1/index.html"
    before = {p: p.read_bytes() for p in Path(moved.root).rglob("*") if p.is_file() and p.name != "catalog.db"}
    repaired = check_store(moved, repair=True)
    assert repaired.repaired["orphans_moved"] == 0 and not Path(moved.root, "lost+found").exists()
    assert {p: p.read_bytes() for p in before} == before


def test_backup_copies_a_store_in_use_with_its_newest_commits(built, tmp_path):
    """``fusion backup`` while this process holds the catalog open, its newest rows still in SQLite's
    write-ahead log: the copy is a whole, clean store with them; the original goes on taking writes."""
    fusion = str(Path(sys.executable).with_name("fusion"))
    built.replace_results("predictions", "run-1", [{"image_id": "b" * 64, "model_version": 1, "predicted": "dog",
                                                    "confidence": 0.8}])
    assert Path(built.root, "catalog.db-wal").stat().st_size > 0
    dest = tmp_path / "backups" / "monday"
    done = subprocess.run([fusion, "backup", str(dest), "--store", built.root], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"copied the store to {dest}" in done.stdout
    copy = Store(str(dest))
    assert {r["predicted"] for r in copy.query("predictions", "run-1")} == {"dog"}
    assert check_store(copy).findings == [] and copy.get_model(1)["path"] == f"{dest}/models/run-1/model.keras"
    again = subprocess.run([fusion, "backup", str(dest), "--store", built.root], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
    built.finish_run(built.start_run("ingest", {}), "completed")
    assert len(built.list_runs()) == 2 and len(copy.list_runs()) == 1


def test_paths_recorded_absolute_before_version_5_migrate_to_relative(built, tmp_path):
    """A catalog of schema version 4 kept the model's and report's absolute paths: after a move they named the
    old place, and fsck took the model as an orphan. The migration makes them relative, whatever the old root."""
    old = "/somewhere/gone/store"
    with built.engine.begin() as conn:
        conn.execute(sa.text("UPDATE models SET path = :p"), {"p": f"{old}/models/run-1/model.keras"})
        conn.execute(sa.text("UPDATE run_stages SET outputs = :o WHERE stage = 'report'"),
                     {"o": f'{{"report": "{old}/reports/run-1/index.html"}}'})
        conn.execute(sa.text("UPDATE fusion_meta SET value = '4' WHERE key = 'schema_version'"))
    from fusion_core.store import catalog

    catalog._migrated.clear()
    moved = _relocated(built, tmp_path)
    with moved.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT path FROM models")).scalar() == "models/run-1/model.keras"
    assert check_store(moved).findings == []


def test_shards_committed_before_checksums_get_one(built):
    """A catalog from before schema version 4 has no checksums: fsck says so, --repair and the next commit that
    carries the shard record them."""
    with built.engine.begin() as conn:
        conn.execute(dataset_shards.update().values(checksum=None))
    assert len(check_store(built).unchecked) == 3
    previous = built.latest_version("images")
    built.commit_version("images", previous["shards"] + [write_shard(built.root, "datasets/images/i3.parquet",
                                                                     _images(3))], "run-1")
    assert all(s["checksum"] for s in built.latest_version("images")["shards"])
    result = check_store(built, repair=True)
    assert result.repaired["checksums_recorded"] >= 1
    assert check_store(built).unchecked == []


def test_repair_waits_for_a_live_run(built):
    built.start_run("ingest", {})  # this process: alive
    with pytest.raises(RuntimeError, match="is live on this store"):
        check_store(built, repair=True)


def test_fsck_command_exit_codes(built):
    fusion = [str(Path(sys.executable).with_name("fusion"))]
    ok = subprocess.run([*fusion, "fsck", "--store", built.root], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "fsck: clean: 3 shards checked" in ok.stdout
    Path(built.root, "datasets/images/i2.parquet").unlink()
    bad = subprocess.run([*fusion, "fsck", "--store", built.root], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "missing   " in bad.stdout and "fsck: 1 errors" in bad.stdout


def test_migration_adds_checksum_and_heartbeat_columns(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE dataset_shards (dataset VARCHAR(20), version INTEGER, path VARCHAR(300), "
                             "num_rows BIGINT, PRIMARY KEY (dataset, version, path))"))
        conn.execute(sa.text("CREATE TABLE runs (run_id VARCHAR(40) PRIMARY KEY, flow VARCHAR(40), status "
                             "VARCHAR(16), started_at DATETIME, finished_at DATETIME, params JSON, summary JSON)"))
        conn.execute(sa.text("CREATE TABLE fusion_meta (key VARCHAR(40) PRIMARY KEY, value VARCHAR(200))"))
        conn.execute(sa.text("INSERT INTO fusion_meta VALUES ('schema_version', '3')"))
    from fusion_core.store.migrations import migrate

    assert migrate(engine) == 3
    assert "checksum" in {c["name"] for c in sa.inspect(engine).get_columns("dataset_shards")}
    assert {"host", "pid", "heartbeat_at"} <= {c["name"] for c in sa.inspect(engine).get_columns("runs")}
