"""The nightly flow on a two-node Ray cluster started with `ray start`, all on loopback."""

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.tf, pytest.mark.prefect]

BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    """Head on 127.0.0.2 and one worker node on 127.0.0.3, one CPU each, token authentication."""
    port = _free_port(HEAD_IP)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    address = f"{HEAD_IP}:{port}"
    start = [str(BIN / "ray"), "start", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run(start + ["--head", f"--node-ip-address={HEAD_IP}", f"--port={port}",
                                "--dashboard-host=127.0.0.2", f"--dashboard-port={_free_port(HEAD_IP)}"],
                       env=env, check=True, capture_output=True, timeout=180)
        subprocess.run(start + [f"--address={address}", f"--node-ip-address={WORKER_IP}"],
                       env=env, check=True, capture_output=True, timeout=180)
        yield address, env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_nightly_on_a_two_node_cluster(ray_cluster, demo_source, tmp_path):
    address, env = ray_cluster
    env = {**env, "RAY_ADDRESS": address, "FUSION_RAY__NODE_IP_ADDRESS": HEAD_IP,
           "PREFECT_HOME": str(tmp_path / "prefect")}
    store = str(tmp_path / "store")
    run = subprocess.run([str(BIN / "fusion"), "run", "nightly", "--source", str(demo_source), "--config", "smoke",
                          "--store", store], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "(nightly): completed" in run.stdout
    assert f"connecting to Ray cluster at {address}" in run.stderr
    assert "ip=127.0.0.3" in run.stderr  # a training worker ran on the second node
