"""Failing infrastructure: a full disk, a read-only store, a catalog database that goes away mid-run. Each run
fails with one clear line, commits nothing partial, and a rerun once the fault is gone completes (real `fusion`
processes, real filesystems mounted here, a real PostgreSQL server stopped and started)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import postgres_database, skip_or_fail
from fusion_core.store import Store
from fusion_core.tools.fsck import check_store

REPO = Path(__file__).resolve().parent.parent
FUSION = str(Path(sys.executable).with_name("fusion"))


def _fusion(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([FUSION, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@contextlib.contextmanager
def _mounted(*mount_args: str, at: Path):
    """``mount ... at``, unmounted afterwards; skips the test where this machine does not allow mounting."""
    at.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *mount_args, str(at)], capture_output=True, text=True)
    if done.returncode != 0:
        skip_or_fail(f"cannot mount here ({done.stderr.strip()}): needs root in a container that allows it")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


def _images(root: Path, db: str | None = None) -> int:
    version = Store(str(root), db).latest_version("images")
    return version["num_rows"] if version else 0


@pytest.mark.ray
@pytest.mark.prefect
def test_a_full_disk_fails_the_run_with_one_line_and_a_rerun_completes(tmp_path, demo_source, prefect_api_env):
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"  # the catalog elsewhere: only the shards meet the full disk
    with _mounted("-t", "tmpfs", "-o", "size=4m", "tmpfs", at=tmp_path / "store") as store:
        filler = store / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=62"], capture_output=True, check=True)
        args = ["run", "ingest", "--source", str(demo_source), "-c", "smoke", "--store", str(store),
                "--set", f"store.db={catalog}"]
        full = _fusion(*args, env=prefect_api_env)
        assert full.returncode == 1, full.stderr[-3000:]
        assert "Traceback" not in full.stderr
        assert "Encountered exception during execution" in full.stderr  # Prefect's own line, kept
        (failed,) = [line for line in _lines(full.stderr) if line.startswith("fusion: run ingest failed: ")]
        assert "No space left on device" in failed and "Retry" not in full.stderr  # a full disk is not retried
        assert _images(store, catalog) == 0  # nothing committed
        found = check_store(Store(str(store), catalog))
        assert found.errors == []
        assert not [f for f in found.orphans if ".tmp-" in f.path]  # no half-written shard left behind

        filler.unlink()
        rerun = _fusion(*args, env=prefect_api_env)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert _images(store, catalog) == 120
        assert check_store(Store(str(store), catalog)).findings == []  # the rerun committed the earlier shard


def test_a_read_only_store_is_refused_before_any_work(tmp_path, demo_source, prefect_api_env):
    root = tmp_path / "store"
    Store(str(root))
    with _mounted("--bind", str(root), at=root):
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], capture_output=True, text=True)
        if remount.returncode != 0:
            skip_or_fail(f"cannot remount read-only here: {remount.stderr.strip()}")
        started = time.monotonic()
        result = _fusion("run", "ingest", "--source", str(demo_source), "--store", str(root),
                         env=prefect_api_env, timeout=120)
        assert result.returncode == 2
        assert _lines(result.stderr) == [f"fusion: the store root {root} is read-only (Read-only file system): Fusion "
                                         f"writes its shards, models and reports there"]
        assert time.monotonic() - started < 30
    assert _images(root) == 0


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own (the suite's shared one must stay up): its URL and a switch."""
    data = f"/tmp/fusion-pg-outage-{uuid.uuid4().hex[:8]}"  # the postgres user must reach it: not under tmp_path
    env = {**os.environ, "FUSION_PGPORT": "55491", "FUSION_PGDATA": data}
    script = str(REPO / "scripts" / "postgres.sh")
    started = subprocess.run([script], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        skip_or_fail(f"no PostgreSQL server could be started: {started.stderr.strip()[-300:]}")
    admin_url = started.stdout.strip().split("=", 1)[1]

    def switch(on: bool) -> None:
        subprocess.run([script] if on else [script, "stop"], env=env, capture_output=True, check=True, timeout=600)

    try:
        with postgres_database(admin_url) as url:
            yield url, switch
            switch(True)  # for the database's removal
    finally:
        switch(False)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.prefect
def test_a_catalog_that_goes_away_mid_run_fails_it_and_a_rerun_completes(tmp_path, demo_source, own_postgres,
                                                                          prefect_api_env):
    url, switch = own_postgres
    store = tmp_path / "store"
    args = ["run", "ingest", "--source", str(demo_source), "-c", "smoke", "--store", str(store),
            "--set", f"store.db={url}", "--set", "ingest.files_per_task=10",
            "--set", "orchestration.retry_delays=[1, 1, 1]"]  # retried (a transient error), but not for 70 s
    proc = subprocess.Popen([FUSION, *args], env=prefect_api_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(store.glob("datasets/images/*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    switch(False)  # shards are being written: the database goes away
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert [line for line in _lines(err) if line.startswith("fusion: run ingest failed: ")] != []

    switch(True)
    assert _images(store, url) == 0  # nothing committed
    assert check_store(Store(str(store), url)).errors == []
    died = Store(str(store), url).list_runs()[0]
    assert died["status"] in ("failed", "abandoned")
    rerun = _fusion(*args, env=prefect_api_env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _images(store, url) == 120
    assert check_store(Store(str(store), url)).errors == []


def test_a_locked_sqlite_catalog_is_refused_with_one_line(tmp_path, demo_source, prefect_api_env):
    """Another program holds the SQLite catalog's write lock longer than the busy timeout
    (``store.sqlite_lock_wait_s``, 30 s by default; 3 s here)."""
    import sqlite3

    root = tmp_path / "store"
    Store(str(root))
    holder = sqlite3.connect(root / "catalog.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = _fusion("run", "ingest", "--source", str(demo_source), "--store", str(root),
                         "--set", "store.sqlite_lock_wait_s=3", env=prefect_api_env, timeout=300)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = _lines(result.stderr)
    assert "database is locked" in line
    assert _images(root) == 0


@pytest.mark.ray
@pytest.mark.prefect
def test_a_sqlite_lock_held_briefly_mid_run_only_delays_it(tmp_path, demo_source, prefect_api_env):
    import sqlite3

    root = tmp_path / "store"
    Store(str(root))
    proc = subprocess.Popen([FUSION, "run", "ingest", "--source", str(demo_source), "-c", "smoke", "--store",
                             str(root)], env=prefect_api_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(root.glob("datasets/images/*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    holder = sqlite3.connect(root / "catalog.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # shards are being written: the catalog is locked for 5 s
    time.sleep(5)
    holder.execute("ROLLBACK")
    holder.close()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert _images(root) == 120 and check_store(Store(str(root))).errors == []
