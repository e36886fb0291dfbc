"""How `fusion run` fails: one clear line, no retries, no traceback unless --debug."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flows.ingest
from flows.cli import app

FUSION = str(Path(sys.executable).with_name("fusion"))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_stage_without_its_input_fails_at_once_with_one_line(tmp_path):
    from fusion_core.store import Store

    Store(str(tmp_path / "store"))  # an empty store
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    started = time.monotonic()
    result = subprocess.run([FUSION, "run", "preprocess", "--store", str(tmp_path / "store")], env=env,
                            capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert _lines(result.stdout + result.stderr) == [
        f"fusion: preprocess: no images dataset in the store at {tmp_path / 'store'} yet; run ingest first"]
    assert took < 15


def test_infer_without_a_champion_names_train(tmp_path):
    from fusion_core.store import Store

    Store(str(tmp_path / "store")).commit_version("pixels", [], None)  # pixels, but no model yet
    result = CliRunner().invoke(app, ["run", "infer", "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert "no champion model" in result.output and "run train first" in result.output


@pytest.mark.parametrize("debug", [False, True])
def test_a_failed_flow_is_one_line_unless_debug(tmp_path, monkeypatch, debug):
    def broken_flow(**_kwargs):
        raise RuntimeError("the catalog went away")

    monkeypatch.setattr(flows.ingest, "ingest_flow", broken_flow)
    args = ["run", "ingest", "--source", str(tmp_path), "--store", str(tmp_path / "store")]
    result = CliRunner().invoke(app, ["--debug", *args] if debug else args)
    assert result.exit_code == 1
    assert "fusion: run ingest failed: RuntimeError: the catalog went away" in result.output
    assert ("Traceback" in result.output) is debug


def test_an_unreachable_catalog_fails_before_prefect_starts(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    started = time.monotonic()
    result = subprocess.run([FUSION, "run", "ingest", "--source", str(tmp_path), "--store", str(tmp_path / "store"),
                             "--set", "store.db=postgresql+psycopg://fusion@127.0.0.1:1/none"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "prefect" not in result.stderr.lower() and "Traceback" not in result.stderr
    (line,) = _lines(result.stderr)
    assert line.startswith("fusion: run ingest failed: OperationalError: connection failed")
    assert time.monotonic() - started < 60
