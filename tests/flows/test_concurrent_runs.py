"""Runs that meet on one store: two nightly runs started at the same moment, and an ad hoc ingest during a
nightly run. One run writes at a time; the others are refused with a clear line; results never interleave
(real `fusion` processes, each with its own Prefect server, a PostgreSQL catalog)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusion_core.store import Store
from fusion_core.tools.fsck import check_store

FUSION = str(Path(sys.executable).with_name("fusion"))
IMAGES = 120  # the smoke demo source's valid images


def _start(args: list[str], home: Path) -> subprocess.Popen:
    return subprocess.Popen([FUSION, *args], env={**os.environ, "PREFECT_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.ray
@pytest.mark.tf
@pytest.mark.prefect
def test_one_run_writes_at_a_time(tmp_path, demo_source, postgres_url, prefect_home_template):
    store_args = ["--store", str(tmp_path / "store"), "--set", f"store.db={postgres_url}"]
    nightly = ["run", "nightly", "--source", str(demo_source), "-c", "smoke", *store_args]
    Store(str(tmp_path / "store"), postgres_url)  # the catalog exists before the race
    homes = [shutil.copytree(prefect_home_template, tmp_path / f"prefect-{i}") for i in range(2)]
    racers = [_start(nightly, home) for home in homes]
    deadline = time.monotonic() + 600
    while all(p.poll() is None for p in racers) and time.monotonic() < deadline:
        time.sleep(0.2)
    (refused,) = [p for p in racers if p.poll() is not None]
    (winner,) = [p for p in racers if p is not refused]
    _, err = refused.communicate()
    assert refused.returncode != 0 and "one run writes to a store at a time: try again when it ends" in err
    assert "Traceback" not in err

    assert winner.poll() is None, "the winning nightly run must still be running"
    ingest = subprocess.run([FUSION, "run", "ingest", "--source", str(demo_source), *store_args],
                            env={**os.environ, "PREFECT_HOME": str(homes[1])},
                            capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 2, ingest.stderr
    (line,) = [x for x in ingest.stderr.splitlines() if x.strip()]
    assert "(nightly) is running on the store" in line and "try again when it ends" in line

    out, err = winner.communicate(timeout=900)
    assert winner.returncode == 0, err[-3000:]
    store = Store(str(tmp_path / "store"), postgres_url)
    runs = store.list_runs()
    completed = [r for r in runs if r["status"] == "completed"]
    assert len(completed) == 1 and completed[0]["flow"] == "nightly"
    assert {r["status"] for r in runs} <= {"completed", "refused"}
    assert [v["num_rows"] for v in store.list_versions("images")] == [IMAGES]
    rows = store.query("predictions", completed[0]["run_id"])
    assert len(rows) == len({r["image_id"] for r in rows}) > 0
    assert check_store(store).findings == []
