"""The light modules must import without TensorFlow or Ray and without touching the working folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LIGHT_MODULES = ["config", "uri", "store", "datasets", "derive", "registry", "ingest", "sources", "decode",
                 "progress", "ray_runtime", "preprocess", "impute", "corrupt", "evaluate", "train", "train_loop",
                 "infer", "clustering", "cluster", "runs", "formatting", "demo_data", "report", "recipes", "errors",
                 "inputs", "doctor", "drift", "scoring"]

SCRIPT = """
import importlib, json, sys
for name in {modules!r}:
    importlib.import_module("fusion_core." + name)
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("tensorflow", "ray", "keras", "tf_keras", "cv2", "skimage"))
print(json.dumps(heavy))
"""


def test_light_modules_import_without_heavy_deps_or_side_effects(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(modules=LIGHT_MODULES)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "tensorflow" not in heavy
    assert "ray" not in heavy
    assert heavy == []
    assert list(tmp_path.iterdir()) == []
