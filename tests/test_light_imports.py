"""The light modules must import without TensorFlow or Ray and without touching the working folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LIGHT_MODULES = ["config", "recipes", "uri", "errors", "formatting", "progress", "ray_runtime", "demo_data",
                 "store", "store.datasets", "data.derive", "data.sources", "data.decode", "data.runs",
                 "learning.registry", "learning.evaluate", "learning.train_loop", "learning.clustering",
                 "learning.scoring", "imaging.impute", "imaging.corrupt",
                 "stages.ingest", "stages.preprocess", "stages.drift", "stages.train", "stages.infer",
                 "stages.cluster", "stages.report", "tools.inputs", "tools.doctor"]

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
