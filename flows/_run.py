"""Run bookkeeping shared by the flows: open a run, or join the one a parent flow opened."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from fusion_core.config import load_settings
from fusion_core.store import Store


@contextmanager
def tracked_run(flow: str, config: str | None, overrides: dict[str, Any] | None, run_id: str | None,
                params: dict[str, Any]):
    """Yield a run id. A new run is opened and closed here unless ``run_id`` joins a parent's run.

    The caller may put a summary in the yielded dict under ``"summary"``.
    """
    if run_id is not None:
        yield {"run_id": run_id}
        return
    store = Store.from_settings(load_settings(config, overrides))
    run = {"run_id": store.start_run(flow, {"config": config, "overrides": overrides, **params})}
    try:
        yield run
    except BaseException as err:
        store.finish_run(run["run_id"], "failed", {"error": f"{type(err).__name__}: {err}"})
        raise
    store.finish_run(run["run_id"], "completed", run.get("summary"))


def run_stage(stage: str, stage_task, config: str | None, overrides: dict[str, Any] | None, run_id: str | None,
              params: dict[str, Any], *task_args) -> dict:
    """Run one stage task as (or within) a run; returns ``{"run_id": ..., **the stage's result}``.

    Args:
        params: the flow's inputs, recorded with a run opened here.
        task_args: what the task takes after ``(config, overrides, run_id)``.
    """
    with tracked_run(stage, config, overrides, run_id, params) as run:
        result = stage_task(config, overrides, run["run_id"], *task_args)
        run["summary"] = {stage: result}
        return {"run_id": run["run_id"], **result}
