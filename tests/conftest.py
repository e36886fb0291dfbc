"""Shared fixtures. Tests keep Ray on loopback (127.0.0.2) and Prefect state in a temporary home."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")
# A Prefect home of this process's own: pytest-xdist workers inherit the controller's environment, and two
# temporary Prefect servers migrating one home's database at once fail to start.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="fusion-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Ray workers' output in a failed test's captured log (the `fusion` command's default hides it: test_cli).
os.environ.setdefault("FUSION_RAY__LOG_TO_DRIVER", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from fusion_core.config import load_settings  # noqa: E402
from fusion_core.demo_data import generate_demo_images  # noqa: E402


# Image helpers the decode, ingest and source tests import (`from conftest import encode_image, random_rgb`).

def encode_image(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """The bytes of a Pillow image saved as ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def random_rgb(h=5, w=7, seed=0) -> np.ndarray:
    """Random uint8 RGB pixels."""
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def rgba_with_hole(h=6, w=8, seed=1) -> tuple[np.ndarray, np.ndarray]:
    """Random RGBA pixels, fully opaque but for a hole (alpha 0), and the hole's mask."""
    rgba = np.random.default_rng(seed).integers(0, 256, size=(h, w, 4), dtype=np.uint8)
    rgba[..., 3] = np.maximum(rgba[..., 3], 1)
    hole = np.zeros((h, w), dtype=bool)
    hole[1:3, 2:5] = True
    hole[5, 0] = True
    rgba[hole, 3] = 0
    return rgba, hole


def gradient_rgb(h=24, w=16) -> np.ndarray:
    """A smooth uint8 RGB gradient (compresses and resizes predictably)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 9 % 256, xx * 13 % 256, (yy + xx) * 5 % 256], -1).astype(np.uint8)


def _png(arr, mode=None) -> bytes:
    """PNG bytes of a uint8 array (``mode`` as for ``PIL.Image.fromarray``, e.g. ``"RGBA"`` or ``"L"``)."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (``--dist loadgroup``), the tests of a module that use its module-scoped fixtures run
    on one worker, so those fixtures are built once."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures is None or item.get_closest_marker("xdist_group"):
            continue
        if any(defs[-1].scope == "module" for defs in fixtures.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_collection_finish(session):
    """Fail at once where pytest-xdist no longer groups (pytest 9.2 renamed the node id it rewrites): each
    worker would then build every module fixture again, and the suite would take far longer."""
    if not getattr(session.config.option, "loadgroup", False):  # set in pytest-xdist's workers
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError(f"pytest-xdist did not group {item.nodeid}: check the pytest and pytest-xdist "
                                    "versions pinned in pyproject.toml")


@pytest.fixture(scope="session")
def png():
    """The PNG encoder ``png(arr, mode=None) -> bytes`` shared by the image tests."""
    return _png


@pytest.fixture
def settings(tmp_path):
    """Smoke-profile settings with a store under the test's temporary folder."""
    return load_settings("smoke", {"store.root": str(tmp_path / "store")})


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory):
    """A small demo image collection (10 classes, with missing pixels and corrupt files)."""
    root = tmp_path_factory.mktemp("demo-source")
    generate_demo_images(root, per_class=12, seed=1)
    return root


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_home_template(tmp_path_factory):
    """A Prefect home whose database a Prefect server has created once (migrations, block types)."""
    home = tmp_path_factory.mktemp("prefect-home-template")
    subprocess.run([sys.executable, "-c", "from flows.prefect_server import free_port, start_server, stop_server; "
                    "stop_server(start_server(free_port(), 300)[0])"],
                   env={**os.environ, "PREFECT_HOME": str(home)}, check=True, timeout=360)
    return home


@pytest.fixture
def prefect_home(prefect_home_template, tmp_path):
    """A Prefect home of this test's own for the `fusion` processes it starts, its database ready: Fusion's
    temporary server starts in seconds instead of migrating a new database first (a fresh home's first run
    is tested on its own, in test_prefect_server)."""
    return Path(shutil.copytree(prefect_home_template, tmp_path / "prefect"))


@pytest.fixture
def prefect_api_env(prefect_harness, tmp_path) -> dict[str, str]:
    """Environment for the `fusion` processes a test starts that is not about Prefect's start: they use the
    session's Prefect server, as a run under a deployment does, instead of each starting a temporary one
    (whose start, on a fresh home and a prepared one, test_prefect_server, the demo and the serve tests cover)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect")}


@pytest.fixture(scope="session")
def demo_nightly(demo_source, tmp_path_factory, prefect_harness, ray_local) -> tuple[Path, dict]:
    """One smoke nightly run on the demo source for the tests that read what it made (copy the store to change
    it): the store root and the flow's result."""
    from flows.nightly import nightly_flow

    root = tmp_path_factory.mktemp("demo-nightly") / "store"
    return root, nightly_flow(str(demo_source), "smoke", {"store.root": str(root)})


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the test session, on loopback (a module that needs another shuts this one down; the
    next test that asks for it gets it started again)."""
    from fusion_core.ray_runtime import ensure_ray

    ray = ensure_ray(load_settings("smoke"))
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _ray_local_running(request):
    """Starts the session's Ray again for a test that asks for it after a module shut it down."""
    if "ray_local" in request.fixturenames:
        from fusion_core.ray_runtime import ensure_ray

        ensure_ray(load_settings("smoke"))


def skip_or_fail(reason: str) -> None:
    """Skip a test whose infrastructure is missing, but fail it under CI (``CI=true``), where `.ci/run` provides
    PostgreSQL, Chromium and mounting: a missing piece there is a broken CI, not a reason to test less."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run should provide it)")
    pytest.skip(reason)


@contextlib.contextmanager
def postgres_database(admin_url: str | None = None):
    """A fresh, empty PostgreSQL database on the server at ``admin_url`` (default FUSION_TEST_POSTGRES_URL),
    dropped afterwards.

    `.ci/run` starts that server (scripts/postgres.sh); without one the test is skipped.
    """
    import uuid

    import sqlalchemy as sa

    admin_url = admin_url or os.environ.get("FUSION_TEST_POSTGRES_URL")
    if not admin_url:
        skip_or_fail("no PostgreSQL server: set FUSION_TEST_POSTGRES_URL (see scripts/postgres.sh)")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"fusion_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as err:
        skip_or_fail(f"PostgreSQL at FUSION_TEST_POSTGRES_URL is unreachable: {err.orig}")
    url = sa.engine.make_url(admin_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test."""
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url():
    """A fresh, empty PostgreSQL database shared by one test module."""
    with postgres_database() as url:
        yield url


S3_BUCKET = "fusion-test"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A ``moto_server`` on 127.0.0.1 with the bucket ``fusion-test``; ``AWS_*`` point at it until the module ends."""
    import boto3

    from fusion_core import uri

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                                   "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as env:
            for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
                env.delenv(name, raising=False)
            env.setenv("AWS_ACCESS_KEY_ID", "fusion-test-key")
            env.setenv("AWS_SECRET_ACCESS_KEY", "fusion-test-secret")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            env.setenv("AWS_ENDPOINT_URL", endpoint)
            boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
            yield endpoint
            uri._remote.cache_clear()  # its filesystems point at this server
    finally:
        server.terminate()
        server.wait(timeout=30)
