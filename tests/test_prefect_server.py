"""The local Prefect server `fusion` starts when PREFECT_API_URL is unset: it waits for a fresh Prefect home's
migrations, and it dies with the process that started it, even under kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from flows.prefect_server import ServerStartError, prefect_api, start_server

pytestmark = pytest.mark.prefect


def test_an_existing_api_url_is_used_as_it_is(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with prefect_api(timeout=1) as url:
        assert url == "http://127.0.0.1:9/api"


def test_a_server_that_does_not_answer_in_time_is_stopped_and_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    with pytest.raises(ServerStartError, match="did not answer within 0.01 s|exited"):
        start_server(0, timeout=0.01)


def _serving(port: str) -> list[int]:
    """The pids of processes whose command line names ``--port PORT``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"--port\0{port}\0".encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_work_given_runs_while_the_server_starts_and_its_failure_stops_the_server(monkeypatch, prefect_home):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(prefect_home))
    seen = []

    def work():  # runs once the server is launched, before it answers
        seen.append(os.environ["PREFECT_API_URL"])
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{seen[0]}/health", timeout=1)

    with prefect_api(300, work) as url:
        assert seen == [url]
        with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:  # and it answers inside
            assert answer.status == 200

    def failing_work():
        seen.append(os.environ["PREFECT_API_URL"])
        raise RuntimeError("Ray did not start")

    with pytest.raises(RuntimeError, match="Ray did not start"):
        with prefect_api(300, failing_work):
            pass
    assert "PREFECT_API_URL" not in os.environ
    assert _serving(seen[-1].rsplit(":", 1)[1].split("/")[0]) == []  # the server launched for it is gone


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_fresh_home_starts_and_the_server_dies_with_a_killed_parent(tmp_path):
    """A process starts the server on a fresh Prefect home (its database migrated on this first start), prints the
    server's pid and waits; kill -9 of that process ends the server too."""
    script = textwrap.dedent("""
        import sys, time
        from flows.prefect_server import free_port, start_server
        server, url = start_server(free_port(), timeout=300)
        print(server.pid, flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "fresh-home")}
    env.pop("PREFECT_API_URL", None)
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert _alive(server_pid) and (tmp_path / "fresh-home").is_dir()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid), "the Prefect server outlived the process that started it"
    finally:
        parent.kill()
