"""A non-editable install: the wheel built from this checkout, installed into a fresh virtual environment,
finds its profiles and runs from a folder that is not the checkout (`fusion --version`, then a small ingest
with the `smoke` profile)."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_core.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.ray
@pytest.mark.prefect
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path, demo_source, prefect_api_env):
    source, dist = tmp_path / "source", tmp_path / "dist"  # built from a copy: a build leaves files behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for package in ("fusion_core", "flows", "tasks"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("fusion-*.whl")
    # A fresh environment that sees this one's packages (the pinned dependencies) but not Fusion's editable
    # install: the .pth files of a folder named in a .pth file are not run.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    packages = next((venv / "lib").glob("python*/site-packages"))
    (packages / "pinned-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    where = subprocess.run([str(python), "-c", "import fusion_core; print(fusion_core.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(packages)), where.stdout + where.stderr

    fusion = str(venv / "bin" / "fusion")
    version = subprocess.run([fusion, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("fusion "), version.stdout + version.stderr
    store = tmp_path / "store"
    ingest = subprocess.run([fusion, "run", "ingest", "-c", "smoke", "--source", str(demo_source), "--store",
                             str(store)], cwd=tmp_path, env=prefect_api_env, capture_output=True, text=True,
                            timeout=600)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    assert Store(str(store)).latest_version("images")["num_rows"] == 120
