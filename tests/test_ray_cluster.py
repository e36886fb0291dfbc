"""The nightly flow on a two-node Ray cluster started with `ray start`, all on loopback, its store on an
S3-compatible server (a real ``moto_server``) and its catalog on PostgreSQL.

The worker node runs from its own working directory in a Python environment that has the pinned
dependencies but not Fusion: Fusion's code reaches it through the job's ``runtime_env``. The first run's
driver connects from outside the cluster (``RAY_ADDRESS``); the rerun is submitted as a Ray Job. Everything
the runs write lands in the bucket, laid out as on a local disk.
"""

import contextlib
import os
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from conftest import S3_BUCKET

from fusion_core import uri
from fusion_core.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.tf, pytest.mark.prefect]

BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def python_without_fusion(tmp_path_factory) -> Path:
    """A virtual environment that sees this one's packages (the pinned dependencies) but not Fusion: its
    site-packages lists ours in a .pth file, whose own .pth files (Fusion's editable install) are not run."""
    root = tmp_path_factory.mktemp("node-env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    packages = next((root / "venv" / "lib").glob("python*/site-packages"))
    (packages / "pinned-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = root / "venv" / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import ray, tensorflow, pyarrow; import fusion_core"], cwd=root,
                           capture_output=True, text=True, timeout=300)
    assert "No module named 'fusion_core'" in probe.stderr, probe.stderr[-2000:]
    return python


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, python_without_fusion, s3_endpoint):
    """Head on 127.0.0.2 (this environment) and one worker node on 127.0.0.3 (the environment without
    Fusion, started from another folder), one CPU each, token authentication; every node has the object
    store's ``AWS_*`` environment, as a cluster's nodes get it from their own configuration."""
    port, dashboard = _free_port(HEAD_IP), _free_port(HEAD_IP)
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must stay under 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    address = f"{HEAD_IP}:{port}"
    start = ["start", "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    try:
        # Each node's dashboard agent (which runs submitted jobs) on a free port: the default one may be
        # taken by another Ray on this machine.
        subprocess.run([str(BIN / "ray"), *start, "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}",
                        f"--dashboard-host={HEAD_IP}", f"--dashboard-port={dashboard}",
                        f"--dashboard-agent-listen-port={_free_port(HEAD_IP)}"],
                       env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([str(python_without_fusion), "-m", "ray.scripts.scripts", *start, f"--address={address}",
                        f"--node-ip-address={WORKER_IP}", f"--dashboard-agent-listen-port={_free_port(WORKER_IP)}"],
                       cwd=tmp_path_factory.mktemp("node-home"), env=env, check=True, capture_output=True,
                       timeout=180)
        yield address, f"http://{HEAD_IP}:{dashboard}", env
    finally:
        _stop_cluster(temp_dir)


def _stop_cluster(temp_dir: str) -> None:
    """Kill this cluster's processes (those naming its temp folder, and their descendants), not every Ray on
    the machine as `ray stop` would, then remove the folder."""
    parents, ours = {}, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid = int(stat.parent.name)
            parents[pid] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if temp_dir.encode() in (stat.parent / "cmdline").read_bytes():
                ours.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    while grown := {pid for pid, parent in parents.items() if parent in ours} - ours:
        ours |= grown
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(3)
    shutil.rmtree(temp_dir, ignore_errors=True)


ROOT = f"s3://{S3_BUCKET}/cluster"


@pytest.fixture(scope="module")
def nightly_args(ray_cluster, demo_source, module_postgres_url) -> list[str]:
    """The store on the S3-compatible server, the catalog on PostgreSQL; inference on Ray Data's actors."""
    return ["run", "nightly", "--source", str(demo_source), "--config", "smoke",
            "--store", ROOT, "--set", f"store.db={module_postgres_url}", "--set", "infer.in_process_max=0",
            "--set", "train.placement_strategy=SPREAD", "--set", "train.num_workers=2"]


def _objects(prefix: str) -> set[str]:
    """Keys under ``prefix`` in the bucket, listed with boto3 (not through Fusion's own code)."""
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def test_nightly_on_a_two_node_cluster_whose_worker_node_has_no_fusion(ray_cluster, nightly_args, tmp_path,
                                                                      prefect_api_env, module_postgres_url):
    address, _, env = ray_cluster
    ray_results = sorted((Path.home() / "ray_results").glob("*"))
    env = {**env, "RAY_ADDRESS": address, "FUSION_RAY__NODE_IP_ADDRESS": HEAD_IP, "FUSION_RAY__LOG_TO_DRIVER": "true",
           **{k: prefect_api_env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME")}}
    workdir = tmp_path / "driver"
    workdir.mkdir()
    run = subprocess.run([str(BIN / "fusion"), *nightly_args], env=env, capture_output=True, text=True,
                         timeout=900, cwd=workdir)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "(nightly): completed" in run.stdout
    assert f"connecting to Ray cluster at {address}" in run.stderr
    # two training workers spread over both nodes; the one on 127.0.0.3 imported Fusion from the runtime_env
    group = run.stderr[run.stderr.index("Started training worker group of size 2"):][:400]
    assert f"ip={HEAD_IP}" in group and f"ip={WORKER_IP}" in group, group
    # everything landed in the bucket: datasets, the model, checkpoints, the report; nothing in the driver's
    # folder (no ./fusion-store, no catalog.db) and no ~/ray_results
    assert list(workdir.iterdir()) == []
    assert sorted((Path.home() / "ray_results").glob("*")) == ray_results
    store = Store(ROOT, module_postgres_url)
    (first,) = store.list_runs()
    assert first["status"] == "completed"
    model = store.champion()
    assert model["path"] == f"{ROOT}/models/{first['run_id']}/model.keras"
    objects = _objects("cluster/")
    assert {f"models/{first['run_id']}/model.keras", f"models/{first['run_id']}/classes.json",
            f"reports/{first['run_id']}/index.html"} <= objects
    for dataset in ("images", "pixels", "predictions", "clusters"):
        shards = {s["path"] for s in store.latest_version(dataset)["shards"]}
        assert shards and all(p.startswith(f"datasets/{dataset}/") for p in shards) and shards <= objects
    checkpoints = [k for k in objects if k.startswith("checkpoints/train-")]
    assert any(k.endswith("/model.keras") for k in checkpoints) and any(k.endswith("/state.json") for k in checkpoints)
    fs, current = uri.filesystem(uri.join(ROOT, "datasets", "predictions", "current"))
    assert pads.dataset(current, filesystem=fs, format="parquet").count_rows() == 120


def test_a_rerun_submitted_as_a_ray_job_reuses_the_results(ray_cluster, nightly_args, module_postgres_url):
    _, dashboard, env = ray_cluster
    submit = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", dashboard, "--",
                             str(BIN / "fusion"), *nightly_args],
                            env=env, capture_output=True, text=True, timeout=900)
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
    assert "(nightly): completed" in submit.stdout
    assert "trained=0, reused=1" in submit.stdout  # the model of the first run, not a new one
    store = Store(ROOT, module_postgres_url)
    first, second = sorted(store.list_runs(), key=lambda r: r["started_at"])
    assert second["status"] == "completed"
    assert f"reports/{second['run_id']}/index.html" in _objects("cluster/")
    assert b"nightly flow, completed" in uri.read_bytes(f"{ROOT}/reports/{second['run_id']}/index.html")
