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

from fusion_core.config import Settings
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


@dataclass
class RunContext:
    """What the stages of a run share, resolved once when the run opens: the run's settings and store, and
    the champion it started with (None: none yet), which drift and train compare with whatever is promoted
    while the run goes on."""

    run_id: str
    settings: Settings
    store: Store
    champion_version: int | None
    summary: dict | None = None  # what the run records when it completes


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
