"""What a stage returns, and how a stage is recorded against its run."""

from __future__ import annotations

import functools
import logging
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from fusion_core.store import Store, to_json

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """Counts, metrics and output locations of one stage of one run."""

    stage: str
    counts: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return to_json(asdict(self))


@functools.cache
def code_version() -> str:
    """Fusion's package version, plus the git commit (``+dirty`` with uncommitted changes) when run from
    a git checkout."""
    try:
        release = version("fusion")
    except PackageNotFoundError:
        release = "unknown"
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return release
    return f"{release}+{sha}{'.dirty' if dirty else ''}"


def record_stage(store: Store, run_id: str, stage: str, fn: Callable[[], StageResult]) -> dict:
    """Run ``fn`` as ``stage`` of ``run_id``, recording its status, counts, metrics and outputs."""
    store.start_stage(run_id, stage)
    started = time.perf_counter()
    try:
        result = fn().as_dict()
    except Exception as err:
        store.finish_stage(run_id, stage, "failed", error=f"{type(err).__name__}: {err}")
        raise
    result["metrics"]["seconds"] = round(time.perf_counter() - started, 2)
    store.finish_stage(run_id, stage, "completed", counts=result["counts"],
                       metrics=result["metrics"], outputs=result["outputs"])
    log.info("%s finished: %s", stage, result["counts"])
    return result


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return f"[{len(value)} items]" if len(value) > 3 else "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _headlines(stages: dict) -> list[str]:
    """One sentence per stage that a person wants first (for the stages that report those figures)."""
    out = []
    c = (stages.get("ingest") or {}).get("counts") or {}
    if {"new_images", "already_stored", "quarantined"} <= c.keys():
        out.append(f"ingested {c['new_images']} new images ({c['already_stored']} already stored), "
                   f"quarantined {c['quarantined']} files {_fmt(c.get('quarantine_reasons', {}))}")
    train = stages.get("train") or {}
    m, o = train.get("metrics") or {}, train.get("outputs") or {}
    if {"accuracy", "macro_f1"} <= m.keys() and {"model_version", "stage"} <= o.keys():
        out.append(f"holdout accuracy {m['accuracy']:.3f} (macro F1 {m['macro_f1']:.3f}), "
                   f"model v{o['model_version']} is {o['stage']}")
    cluster = stages.get("cluster") or {}
    if "clusters" in (cluster.get("counts") or {}):
        quality = ", ".join(f"{k} {v:.3f}" for k, v in cluster["metrics"].items() if k in ("silhouette", "nmi", "ari"))
        out.append(f"{cluster['counts']['clusters']} clusters found ({quality})")
    return out


def describe_run(run: dict, store: Store) -> str:
    """A readable account of a run: each stage with its counts, metrics and outputs, then where results are."""
    took = (run["finished_at"] - run["started_at"]).total_seconds() if run.get("finished_at") else None
    lines = [f"Run {run['run_id']} ({run['flow']}): {run['status']}"
             + (f" in {took:.0f}s" if took is not None else "")]
    lines += [f"  * {line}" for line in _headlines({s["stage"]: s for s in run["stages"]})]
    for stage in run["stages"]:
        lines.append(f"  {stage['stage']:<11} {stage['status']}" + (f": {stage['error']}" if stage["error"] else ""))
        for part in ("counts", "metrics", "outputs"):
            values = {k: v for k, v in (stage[part] or {}).items() if k not in ("confusion_matrix", "per_class_f1")}
            if values:
                lines.append(f"      {part + ':':<9}" + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
    lines += ["Results",
              f"  store root   {store.root}",
              f"  catalog      {store.engine.url.render_as_string(hide_password=True)}"
              " (tables: runs, run_stages, models, quarantine, predictions, cluster_assignments, cluster_summaries)",
              f"  datasets     {store.path('datasets')}/<images|pixels|predictions|clusters>/*.parquet",
              f"  details      fusion show {run['run_id']} --store {store.root}",
              *(f"  report       {s['outputs']['report']}" for s in run["stages"] if (s["outputs"] or {}).get("report"))]
    return "\n".join(lines)
