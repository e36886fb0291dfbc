"""Runs whose process died show as abandoned; one run at a time holds a store's writer lease (real processes,
a real SQLite catalog; the PostgreSQL case where a server is available)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusion_core.data.runs import StageResult, record_stage
from fusion_core.store import Store, StoreBusyError
from fusion_core.store.tables import runs

DIE_IN_TRAIN = """
import os, sys
from fusion_core.store import Store
store = Store(sys.argv[1])
run_id = store.start_run("nightly", {}, run_id=sys.argv[2], exclusive=True)
store.start_stage(run_id, "train")
os.kill(os.getpid(), 9)
"""


def _killed_run(root: str, run_id: str) -> None:
    """A run started by another process, killed with SIGKILL while in its train stage."""
    done = subprocess.run([sys.executable, "-c", DIE_IN_TRAIN, root, run_id], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr


def test_a_killed_run_shows_as_abandoned_and_is_closed_by_the_next(tmp_path):
    store = Store(str(tmp_path / "store"))
    for i in range(3):
        _killed_run(store.root, f"dead-{i}")
    assert [r["status"] for r in store.list_runs()] == ["abandoned"] * 3
    dead = store.get_run("dead-0")
    assert dead["status"] == "abandoned" and dead["stages"][0]["status"] == "abandoned"

    run_id = store.start_run("nightly", {}, exclusive=True)  # the dead runs' lease does not block it
    closed = store.get_run("dead-1")
    assert closed["status"] == "abandoned" and closed["summary"]["abandoned_in"] == "train"
    assert closed["finished_at"] is not None
    assert store.get_run(run_id)["status"] == "running"


def test_fusion_runs_and_show_say_a_killed_run_was_abandoned(tmp_path):
    root = str(tmp_path / "store")
    Store(root)
    _killed_run(root, "dead-run")
    fusion = str(Path(sys.executable).with_name("fusion"))
    listed = subprocess.run([fusion, "runs", "--store", root], capture_output=True, text=True, timeout=120)
    assert "dead-run" in listed.stdout and "abandoned" in listed.stdout
    shown = subprocess.run([fusion, "show", "dead-run", "--store", root], capture_output=True, text=True,
                           timeout=120)
    assert "(nightly): abandoned" in shown.stdout and "train       abandoned" in shown.stdout


def test_a_run_without_a_recent_heartbeat_is_abandoned(tmp_path):
    """A run on another host is judged by its heartbeat alone."""
    store = Store(str(tmp_path / "store"))
    run_id = store.start_run("nightly", {})
    stale = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=10)
    with store.engine.begin() as conn:
        conn.execute(runs.update().values(host="elsewhere", heartbeat_at=stale))
    assert store.get_run(run_id)["status"] == "abandoned"
    with store.engine.begin() as conn:
        conn.execute(runs.update().values(heartbeat_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)))
    assert store.get_run(run_id)["status"] == "running"


def test_heartbeat_is_renewed_while_the_run_works(tmp_path):
    store = Store(str(tmp_path / "store"))
    run_id = store.start_run("nightly", {})
    first = store.get_run(run_id)["heartbeat_at"]
    with store.heartbeat(run_id, every=0.05):
        time.sleep(0.5)
    assert store.get_run(run_id)["heartbeat_at"] > first


def test_a_catalog_that_goes_away_costs_the_heartbeat_a_warning_not_its_thread(tmp_path, monkeypatch, caplog):
    import threading

    import sqlalchemy as sa

    import fusion_core.store.runs as store_runs

    store = Store(str(tmp_path / "store"))
    run_id = store.start_run("nightly", {})
    crashed = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    monkeypatch.setattr(store_runs, "DETAILS_S", 0.05)

    def gone(_run_id):
        raise sa.exc.OperationalError("SELECT", {}, Exception("the database system is shutting down"))

    monkeypatch.setattr(store, "get_run", gone)
    with store.heartbeat(run_id, every=0.05, details=lambda: {"dashboard": str(time.monotonic())}):
        time.sleep(0.4)
    assert not crashed and "heartbeat of run" in caplog.text


def test_a_second_writer_is_refused_until_the_first_ends(tmp_path):
    store = Store(str(tmp_path / "store"))
    first = store.start_run("nightly", {}, exclusive=True)
    with pytest.raises(StoreBusyError, match=f"run {first} \\(nightly\\) is running on the store"):
        store.start_run("ingest", {}, exclusive=True)
    refused = store.list_runs()[0]
    assert refused["status"] == "refused" and "one run writes to a store at a time" in refused["summary"]["error"]
    store.finish_run(first, "completed")
    second = store.start_run("ingest", {}, exclusive=True)
    assert store.get_run(second)["status"] == "running"


def test_a_failed_stage_is_not_abandoned(tmp_path):
    store = Store(str(tmp_path / "store"))
    run_id = store.start_run("train", {})
    with pytest.raises(ValueError):
        record_stage(store, run_id, "train", lambda: (_ for _ in ()).throw(ValueError("bad")))
    record_stage(store, run_id, "report", lambda: StageResult("report"))
    store.finish_run(run_id, "failed")
    assert [s["status"] for s in store.get_run(run_id)["stages"]] == ["failed", "completed"]
    assert store.close_abandoned() == []


RACE = """
import sys, time
from fusion_core.store import Store, StoreBusyError
store = Store(sys.argv[1], sys.argv[2] or None)
try:
    store.start_run("nightly", {}, exclusive=True)
except StoreBusyError as err:
    print(err)
    sys.exit(3)
time.sleep(4)
"""


def _race(root: str, db_url: str) -> list[int]:
    """Two processes start an exclusive run on one store at the same moment; their exit codes."""
    procs = [subprocess.Popen([sys.executable, "-c", RACE, root, db_url], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    return sorted(p.wait(timeout=120) for p in procs)


def test_two_runs_started_at_once_on_sqlite_one_is_refused(tmp_path):
    Store(str(tmp_path / "store"))  # the catalog exists before the race
    assert _race(str(tmp_path / "store"), "") == [0, 3]


def test_two_runs_started_at_once_on_postgresql_one_is_refused(postgres_url, tmp_path):
    Store(str(tmp_path / "store"), postgres_url)
    assert _race(str(tmp_path / "store"), postgres_url) == [0, 3]
