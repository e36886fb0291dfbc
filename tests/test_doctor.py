"""`fusion doctor`: each check on real folders, databases and servers; the whole command on a local Ray."""

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from fusion_core.config import load_settings
from fusion_core.store import Store
from fusion_core.store.tables import SCHEMA_VERSION, meta
from fusion_core.tools import doctor
from fusion_core.tools.doctor import FAIL, PASS, WARN
from fusion_core.tools.doctor.cluster import fusion_identity, ray_resources

FUSION = str(Path(sys.executable).with_name("fusion"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_versions_of_this_install_pass():
    checks = {c.name: c for c in doctor.versions()}
    assert {"python", "fusion", "tensorflow", "tf-keras", "keras", "ray", "prefect client"} <= set(checks)
    assert all(c.status == PASS for c in checks.values()), checks
    assert checks["ray"].detail == version("ray")


def test_store_probe_leaves_nothing_behind(tmp_path):
    (tmp_path / "store").mkdir()
    check = doctor.store_root(str(tmp_path / "store"))
    assert check.status == PASS and "did not exist" not in check.detail
    assert list((tmp_path / "store").iterdir()) == []

    check = doctor.store_root(str(tmp_path / "new" / "store"))
    assert check.status == PASS and "the first run creates it" in check.detail
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]


def test_store_root_that_cannot_be_created_fails_with_a_hint(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    check = doctor.store_root(str(tmp_path / "file" / "store"))
    assert check.status == FAIL and "cannot write" in check.detail
    assert "store.root" in check.hint
    assert (tmp_path / "file").read_text() == "not a folder"


def test_missing_sqlite_catalog_warns_and_is_not_created(tmp_path):
    check = doctor.catalog(str(tmp_path / "store"), None)
    assert check.status == WARN and "the first run creates it" in check.detail
    assert list(tmp_path.iterdir()) == []
    check = doctor.catalog(str(tmp_path), f"sqlite:///{tmp_path / 'other.db'}")
    assert check.status == WARN and not (tmp_path / "other.db").exists()


def test_catalog_of_a_store_passes_and_older_or_newer_schemas_are_told(tmp_path):
    store = Store(str(tmp_path / "store"))
    check = doctor.catalog(str(tmp_path / "store"), None)
    assert (check.status, check.detail.split(" in ")[0]) == (PASS, f"schema version {SCHEMA_VERSION}")
    for found, status, words in ((SCHEMA_VERSION - 1, WARN, "migrates on first open"),
                                 (SCHEMA_VERSION + 1, FAIL, "older than the catalog")):
        with store.engine.begin() as conn:
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(found)))
        check = doctor.catalog(str(tmp_path / "store"), None)
        assert check.status == status and words in check.detail


def test_unreachable_database_fails_with_its_host_but_not_its_password(tmp_path):
    url = f"postgresql+psycopg://fusion:s3cret-pw@127.0.0.1:{_free_port()}/fusion"
    check = doctor.catalog(str(tmp_path), url)
    assert check.status == FAIL and "127.0.0.1" in check.detail and check.hint
    assert "s3cret-pw" not in check.detail + check.hint
    assert doctor.catalog("s3://bucket/store", None).status == FAIL


def test_schema_versions_compared():
    assert doctor.schema_check(3, 3, "db").status == PASS
    assert "migrates on first open" in doctor.schema_check(2, 3, "db").detail
    newer = doctor.schema_check(4, 3, "db")
    assert newer.status == FAIL and "this Fusion is older than the catalog" in newer.detail and newer.hint


def test_workers_judged_on_fusion_code_tensorflow_and_gpus():
    driver = {"fusion": "0.1.0+abc", "code": "c0de"}
    good = {"node": "10.0.0.2", **driver, "tensorflow": "2.21.0", "gpus": 0}
    checks = doctor.worker_checks([good], driver, use_gpu=False)
    assert [c.status for c in checks] == [PASS, PASS]
    shipped = {**good, "fusion": "0.1.0"}  # the same code, shipped without its git information
    assert doctor.worker_checks([shipped], driver, use_gpu=False)[0].status == PASS
    other = doctor.worker_checks([good, {**good, "fusion": "0.0.9", "code": "01d"}], driver, use_gpu=False)
    assert other[0].status == FAIL and "10.0.0.2 imports 0.0.9" in other[0].detail
    assert "runtime_env" in other[0].hint
    no_gpu = doctor.worker_checks([good], driver, use_gpu=True)
    assert no_gpu[-1].status == FAIL and "--no-gpu" in no_gpu[-1].hint
    assert doctor.worker_checks([{**good, "gpus": 2}], driver, use_gpu=True)[-1].status == PASS
    assert doctor.worker_checks([good], driver, use_gpu=False, ray_gpus=1)[-1].status == WARN
    lost = doctor.worker_checks([{"node": "10.0.0.3", "error": "ModuleNotFoundError: fusion_core"}], driver, False)
    assert lost[0].status == FAIL and "10.0.0.3" in lost[0].detail


def test_a_local_probe_that_dies_says_so():
    from fusion_core.tools.doctor.cluster import _local_report

    died = subprocess.Popen([sys.executable, "-c", "import sys; print('partial'); sys.exit(3)"],
                            stdout=subprocess.PIPE, text=True)
    assert _local_report(died) == {"node": "this machine", "error": "Python exited with code 3 before it reported"}


def test_fusion_identity_is_the_version_and_a_hash_of_the_code():
    from fusion_core.data.runs import code_version

    identity = fusion_identity()
    assert identity["fusion"] == code_version() and len(identity["code"]) == 12
    assert fusion_identity() == identity


def test_ray_resources_warn_when_training_workers_do_not_fit():
    settings = load_settings(None, {"train.num_workers": 4})
    assert ray_resources(1, {"CPU": 8.0}, settings).status == PASS
    short = ray_resources(1, {"CPU": 2.0}, settings)
    assert short.status == WARN and "needs 4 CPU" in short.detail
    gpus = ray_resources(2, {"CPU": 8.0}, load_settings(None, {"train.use_gpu": True}))
    assert gpus.status == WARN and "GPU" in gpus.detail


def test_unreachable_ray_address_fails_without_starting_ray():
    settings = load_settings(None, {"ray.address": f"127.0.0.2:{_free_port()}"})
    [check] = list(doctor.ray_checks(settings))
    assert check.status == FAIL and "cannot reach" in check.detail and "RAY_ADDRESS" in check.hint


def test_ray_token_errors_hint_at_the_token():
    from ray.exceptions import AuthenticationError

    from fusion_core.tools.doctor.cluster import _ray_failed

    check = _ray_failed("10.0.0.1:6379", AuthenticationError("Token authentication failed"))
    assert check.status == FAIL and "RAY_AUTH_TOKEN" in check.hint and "RAY_AUTH_MODE" in check.hint


@pytest.fixture
def prefect_api():
    """A stand-in Prefect API on loopback answering /api/admin/version with this client's version."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(version("prefect")).encode() if self.path == "/api/admin/version" else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/api"
    server.shutdown()


def test_prefect_server_version_or_why_not(prefect_api):
    assert doctor.prefect_server(None).status == WARN
    check = doctor.prefect_server(prefect_api)
    assert check.status == PASS and check.detail.startswith(version("prefect"))
    gone = doctor.prefect_server(f"http://127.0.0.1:{_free_port()}/api")
    assert gone.status == FAIL and "prefect server start" in gone.hint


def test_doctor_refuses_an_unknown_format():
    assert CliRunner().invoke(app, ["doctor", "--format", "yaml"]).exit_code == 2


@pytest.mark.ray
@pytest.mark.tf
def test_doctor_on_a_local_ray(tmp_path, prefect_home):
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)
    env.pop("RAY_ADDRESS", None)
    store = tmp_path / "store"
    Store(str(store))
    result = subprocess.run([FUSION, "doctor", "-c", "smoke", "--store", str(store), "--set", "ray.num_cpus=1",
                             "--set", "train.num_workers=1"], env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("PASS ray cluster: no ray.address or RAY_ADDRESS set: started a local Ray")
               for line in lines)
    assert "PASS ray resources: 1 node; CPU 1, GPU 0" in lines
    assert any(line.startswith("PASS workers: 1 node imports this Fusion (code ") for line in lines)
    assert "PASS worker gpus: no GPUs: training runs on CPUs" in lines
    assert f"PASS catalog: schema version {SCHEMA_VERSION} in sqlite:///{store / 'catalog.db'}" in lines
    assert lines[-1].endswith(" 0 failed")
    assert not (store / ".fusion-doctor").exists()
