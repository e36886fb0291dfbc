"""A local Prefect server for the ``fusion`` command when PREFECT_API_URL is unset.

Prefect would start its own temporary server, but it waits only ``server.ephemeral.startup_timeout_seconds``
(20 s by default) for it: not enough for the database migrations of a fresh Prefect home on a slow CPU. And
a ``kill -9`` of the process that started it leaves that server running. The server started here waits as
long as Fusion's settings say (``orchestration.server_startup_timeout``), and on Linux it is ended by the
kernel when the process that started it dies, however it dies.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

# What Prefect sets for its own temporary server: no UI, the services a temporary server runs.
TEMPORARY_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                        "PREFECT__SERVER_FINAL": "1"}


# The API URL of the temporary server this process started, while it runs: its UI links die with it.
temporary: dict[str, str | None] = {"url": None}


class ServerStartError(RuntimeError):
    """The Prefect server did not answer in time."""


def die_with_parent() -> None:
    """In a child process: be sent SIGTERM when the parent exits (Linux), however it exits."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, timeout: float, ui: bool = False) -> tuple[subprocess.Popen, str]:
    """Start a Prefect server on 127.0.0.1:``port`` and wait until it answers; returns the process and API URL.

    ``ui=False`` starts what Prefect's temporary server runs (the API, through uvicorn); ``ui=True`` runs
    ``prefect server start`` (UI and scheduling services).

    Raises:
        ServerStartError: it exited or did not answer within ``timeout`` seconds (it is stopped then).
    """
    server, url = launch_server(port, ui)
    wait_for_server(server, url, timeout)
    return server, url


def launch_server(port: int, ui: bool = False) -> tuple[subprocess.Popen, str]:
    """Start a Prefect server on 127.0.0.1:``port`` (see ``start_server``) without waiting for it."""
    url = f"http://127.0.0.1:{port}/api"
    if ui:
        command = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                   "--port", str(port)]
        env = dict(os.environ)
    else:
        package = Path(importlib.util.find_spec("prefect").origin).parent  # not imported: see prefect_api
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(package.parent),
                   "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "error"]
        env = {**os.environ, **TEMPORARY_SERVER_ENV}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent), url


def wait_for_server(server: subprocess.Popen, url: str, timeout: float) -> None:
    """Wait until the server launched at ``url`` answers; stop it and raise ServerStartError if it exits or
    stays silent for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            if server.poll() is not None:
                raise ServerStartError(f"the Prefect server at {url} exited with code {server.returncode}")
            time.sleep(0.3)
    stop_server(server)
    raise ServerStartError(f"the Prefect server at {url} did not answer within {timeout:g} s "
                           "(orchestration.server_startup_timeout)")


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server started here (SIGTERM, then SIGKILL after 30 s)."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@contextmanager
def prefect_api(timeout: float, while_starting=None):
    """Within: PREFECT_API_URL names a Prefect server. An existing PREFECT_API_URL is used as it is; otherwise a
    temporary server is started here for the duration, and stopped after. ``while_starting()``, when given, is
    called once the server is launched, before waiting for it to answer (work that needs no Prefect API).

    Prefect reads its settings when first imported: enter this before anything imports ``prefect``.
    """
    if os.environ.get("PREFECT_API_URL"):
        if while_starting:
            while_starting()
        yield os.environ["PREFECT_API_URL"]
        return
    server, url = launch_server(free_port())
    os.environ["PREFECT_API_URL"] = temporary["url"] = url
    try:
        if while_starting:
            while_starting()
        wait_for_server(server, url, timeout)
        yield url
    finally:
        _drain_prefect_workers()
        os.environ.pop("PREFECT_API_URL", None)
        temporary["url"] = None
        stop_server(server)


def _drain_prefect_workers() -> None:
    """Send the logs and events Prefect still queues before its server goes (as Prefect's test harness does)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except RuntimeError:  # never started
            pass
