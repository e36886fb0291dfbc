"""The local Prefect server `fusion` starts when PREFECT_API_URL is unset: it waits for a fresh Prefect home's
migrations, and it dies with the process that started it, even under kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
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
