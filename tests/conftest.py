"""Shared fixtures. Tests keep Ray on loopback (127.0.0.2) and Prefect state in a temporary home."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="fusion-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from fusion_core.config import load_settings  # noqa: E402
from fusion_core.demo_data import generate_demo_images  # noqa: E402


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


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per test module, on loopback."""
    from fusion_core.ray_runtime import ensure_ray

    ray = ensure_ray(load_settings("smoke"))
    yield ray
    ray.shutdown()


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test (server from FUSION_TEST_POSTGRES_URL).

    `.ci/run` starts that server (scripts/postgres.sh); without one these tests are skipped.
    """
    import uuid

    import sqlalchemy as sa

    admin_url = os.environ.get("FUSION_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("no PostgreSQL server: set FUSION_TEST_POSTGRES_URL (see scripts/postgres.sh)")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"fusion_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as err:
        pytest.skip(f"PostgreSQL at FUSION_TEST_POSTGRES_URL is unreachable: {err.orig}")
    url = sa.engine.make_url(admin_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
