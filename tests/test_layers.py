"""The layers in pyproject.toml's import-linter contracts hold (`lint-imports`), and a sideways import between
two stages breaks them: the check that keeps docs/architecture.md and the code from drifting apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the packages under root, not the installed ones
    return subprocess.run([LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_layers_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_stage_importing_another_breaks_the_layers(tmp_path):
    for package in ("fusion_core", "flows", "tasks"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    drift = tmp_path / "fusion_core" / "stages" / "drift.py"
    drift.write_text(drift.read_text() + "\nfrom fusion_core.stages.infer import infer_dataset  # noqa: E402\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "no stage imports another BROKEN" in result.stdout
    assert "fusion_core.stages.drift -> fusion_core.stages.infer" in result.stdout
