"""The nightly deployment of deploy/prefect.yaml, run unattended as in production.

A real Prefect server (loopback, free port), a process work pool, `prefect deploy` of the YAML from a git
copy of this checkout (its build step versions the deployment from git; its pull step clones that copy
before each run) and a `prefect worker` that runs the flows. Ray stays on loopback through
FUSION_RAY__NODE_IP_ADDRESS (tests/conftest.py), which the worker passes on to its runs.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from flows.cli import app
from fusion_core.demo_data import generate_demo_images
from fusion_core.store import Store

pytestmark = [pytest.mark.prefect, pytest.mark.ray, pytest.mark.tf]

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "fusion"  # the work pool deploy/prefect.yaml names


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process started by ``pid``, directly or not, that is still its descendant."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM a process this test started and everything it started, then SIGKILL what is left."""
    tree = [proc.pid, *_descendants(proc.pid)]
    for pid in tree:
        _signal(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:
        if Path(f"/proc/{pid}").exists():
            _signal(pid, signal.SIGKILL)
    proc.wait()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _repository_copy(dest: Path) -> Path:
    """This checkout's files (committed or not, ignored ones left out) as a one-commit git repository."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    git = ["git", "-C", str(dest), "-c", "user.name=fusion-test", "-c", "user.email=fusion-test@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "code under test"]):
        subprocess.run(git + args, check=True, capture_output=True)
    return dest


class _Webhook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.put(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def webhook():
    """A local receiver of the failure messages: yields ``(url, queue of received JSON bodies)``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    server.received = queue.Queue()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/fusion-failures", server.received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, webhook, prefect_home_template):
    """Server, pool, deployment and worker; yields ``{"client", "deployment", "tmp", "worker_log"}``."""
    tmp = tmp_path_factory.mktemp("deployment")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(shutil.copytree(prefect_home_template, tmp / "prefect-home")), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    started: list[subprocess.Popen] = []
    try:
        started.append(subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_healthy(api, started[0])
        repo = _repository_copy(tmp / "repo")
        _prefect(env, "work-pool", "create", POOL, "--type", "process")
        _prefect({**env, "FUSION_WEBHOOK_URL": webhook[0]}, "--no-prompt", "deploy", "--all",
                 "--prefect-file", "deploy/prefect.yaml", cwd=repo)
        worker_log = tmp / "worker.log"
        with open(worker_log, "w") as log:
            started.append(subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL], cwd=tmp,
                                            env={**env, "FUSION_GIT_URL": repo.as_uri()},
                                            stdout=log, stderr=subprocess.STDOUT))
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("nightly/nightly")
            for schedule in nightly.schedules:  # only the runs this test starts, whatever the time of day
                client.update_deployment_schedule(nightly.id, schedule.id, active=False)
            yield {"client": client, "deployment": nightly, "tmp": tmp, "worker_log": worker_log, "repo": repo}
    finally:
        for proc in reversed(started):
            _stop(proc)


def _prefect(env: dict, *args: str, cwd: Path | None = None) -> None:
    result = subprocess.run([PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def _wait_healthy(api: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                return
        except OSError:
            assert server.poll() is None, "prefect server exited"
            time.sleep(0.5)
    raise AssertionError("prefect server did not become healthy in 120 s")


def _wait(client, flow_run_id, done, what: str, timeout: float, worker_log: Path):
    """The flow run once ``done(run)`` holds; fails after ``timeout`` seconds with the worker's log."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and done(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"flow run {run.name} still {run.state and run.state.name} after {timeout:.0f}s, "
                                 f"expected {what}; worker log:\n{worker_log.read_text()[-4000:]}")
        time.sleep(0.5)


def _params(source, store) -> dict:
    return {"source": str(source), "config": "smoke",
            "overrides": {"store.root": str(store), "train.epochs": 1, "train.num_workers": 1}}


def test_nightly_runs_on_the_worker_once_at_a_time_with_logs_and_artifacts(deployment):
    client, nightly, tmp = deployment["client"], deployment["deployment"], deployment["tmp"]
    source, store = tmp / "source", tmp / "store"
    generate_demo_images(source, per_class=5, seed=1)

    first = client.create_flow_run_from_deployment(nightly.id, parameters=_params(source, store))
    _wait(client, first.id, lambda r: r.state.is_running() or r.state.is_final(), "running", 120,
          deployment["worker_log"])
    overlapping = client.create_flow_run_from_deployment(nightly.id, parameters=_params(source, store))
    overlapping = _wait(client, overlapping.id, lambda r: r.state.is_final(), "cancelled", 60,
                        deployment["worker_log"])
    first = _wait(client, first.id, lambda r: r.state.is_final(), "completed", 300, deployment["worker_log"])

    assert first.state.is_completed(), f"{first.state.message}\n{deployment['worker_log'].read_text()[-4000:]}"
    assert overlapping.state.is_cancelled() and "concurrency limit" in overlapping.state.message
    assert not any(s.is_running() for s in client.read_flow_run_states(overlapping.id))  # never ran beside it
    assert nightly.version == subprocess.run(["git", "-C", str(deployment["repo"]), "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip()

    (run,) = Store(str(store)).list_runs()  # named after the Fusion run, which links back to the flow run
    assert first.name == run["run_id"] and run["status"] == "completed"
    assert run["params"]["prefect"]["flow_run_id"] == str(first.id)
    assert run["params"]["prefect"]["url"].endswith(f"/runs/flow-run/{first.id}")
    shown = CliRunner().invoke(app, ["show", run["run_id"], "--store", str(store)])
    assert run["params"]["prefect"]["url"] in shown.output

    flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=run["run_id"])))
    assert {f.name for f in flow_runs} >= {run["run_id"], f"{run['run_id']}-ingest", f"{run['run_id']}-report"}
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[f.id for f in flow_runs])))
    assert any(log.name == "fusion_core.data.runs" and log.message.startswith("ingest finished") for log in logs)

    artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=FlowRunFilter(
        name=FlowRunFilterName(like_=run["run_id"])))}
    assert "ingested 50 new images" in artifacts["fusion-ingest-summary"].data
    assert run["run_id"] in artifacts["fusion-nightly-run"].data
    report = next(s["outputs"]["report"] for s in Store(str(store)).get_run(run["run_id"])["stages"]
                  if s["stage"] == "report")
    assert f"]({Path(report).as_uri()})" in artifacts["fusion-report"].data  # a markdown link to the file
    assert artifacts["fusion-preprocess-progress"].type == "progress"
    assert artifacts["fusion-preprocess-progress"].data == 100.0


def test_a_failed_nightly_calls_the_webhook_and_is_not_retried(deployment, webhook):
    client, nightly, tmp = deployment["client"], deployment["deployment"], deployment["tmp"]
    missing = tmp / "no-such-source"
    run = client.create_flow_run_from_deployment(nightly.id, parameters=_params(missing, tmp / "failing-store"))
    run = _wait(client, run.id, lambda r: r.state.is_final(), "failed", 240, deployment["worker_log"])

    assert run.state.is_failed()
    message = webhook[1].get(timeout=30)
    assert message["flow_run_id"] == str(run.id) and message["flow"] == "nightly"
    assert message["fusion_run_id"] == run.name and message["state"] == "Failed"
    assert "does not exist" in message["message"] and message["url"].endswith(str(run.id))
    ingest_runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{run.name}-ingest"])))
    assert [t.run_count for t in ingest_runs if t.name.startswith("ingest")] == [1]  # a missing source: no retry
