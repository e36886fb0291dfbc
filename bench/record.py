"""What every benchmark results file records beside its figures: when, at which commit, on what machine.

Absolute times differ several-fold between machines of the same size (CPU model, AVX-512, bfloat16), so a
results file names its machine, and only ratios measured in one run compare across machines. Each bench
script writes a fresh file through ``write_results``; nothing merges into an older one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# instruction-set flags that change TensorFlow's and NumPy's speed several-fold
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict:
    """CPU model, cores, memory and the speed-relevant instruction-set flags of this machine."""
    info = {"cpu_model": platform.processor() or platform.machine(), "cores": os.cpu_count(), "isa": []}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu_model"] = fields.get("model name", info["cpu_model"])
        flags = set(fields.get("flags", "").split())
        info["isa"] = [f for f in ISA_FLAGS if f in flags]
    except OSError:
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    for name in ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS"):
        if os.environ.get(name):
            info[name] = os.environ[name]
    return info


def commit() -> str:
    """The checked-out commit (with ``+dirty`` when the work tree has changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_context() -> dict:
    """Date, commit, machine, and the load on the machine when the run began (idle below 0.5 per core)."""
    load = os.getloadavg()[0]
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit(),
            "machine": machine(), "load_at_start": round(load, 2), "idle": load < 0.5 * (os.cpu_count() or 1)}


def write_results(name: str, payload: dict, context: dict | None = None) -> Path:
    """Write ``bench/results/<name>.json``: the run's context (``run_context()`` taken when the run began,
    else now) and ``payload``; the file is replaced whole."""
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({**(context or run_context()), **payload}, indent=2) + "\n")
    return path
