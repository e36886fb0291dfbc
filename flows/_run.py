"""Run bookkeeping shared by the flows: open a run, or join the one a parent flow opened; name the Prefect
flow run after it, and show its stages in Prefect (logs, artifacts, timeouts)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from flows.artifacts import progress_artifacts, publish_run, publish_stage
from flows.flow_run import current_link, name_flow_run
from flows.logs import send_logs_to_prefect
from fusion_core.config import load_settings
from fusion_core.ray_runtime import dashboard_details
from fusion_core.store import Store


@contextmanager
def tracked_run(flow: str, config: str | None, overrides: dict[str, Any] | None, run_id: str | None,
                params: dict[str, Any]):
    """Yield a run id. A new run is opened and closed here unless ``run_id`` joins a parent's run.

    A new run takes the store's writer lease (``StoreBusyError`` while another run holds it) and renews its
    heartbeat until it ends, so that a run whose process dies shows as ``abandoned``.

    The flow run is named after the run (``<run id>-<flow>`` when it joins one); a new run records the
    flow run's id and UI link in its params. The caller may put a summary in the yielded dict under
    ``"summary"``.
    """
    send_logs_to_prefect()
    if run_id is not None:
        name_flow_run(f"{run_id}-{flow}", run_id)
        yield {"run_id": run_id}
        return
    store = Store.from_settings(load_settings(config, overrides))
    run = {"run_id": store.start_run(flow, {"config": config, "overrides": overrides, **params,
                                            "prefect": current_link()}, exclusive=True)}
    name_flow_run(run["run_id"], run["run_id"])
    try:
        with store.heartbeat(run["run_id"], details=dashboard_details):
            yield run
    except BaseException as err:
        store.finish_run(run["run_id"], "failed", {"error": f"{type(err).__name__}: {err}"})
        raise
    store.finish_run(run["run_id"], "completed", run.get("summary"))
    publish_run(store.get_run(run["run_id"]), store)


def run_stage(stage: str, stage_task, config: str | None, overrides: dict[str, Any] | None, run_id: str | None,
              params: dict[str, Any], *task_args) -> dict:
    """Run one stage task as (or within) a run; returns ``{"run_id": ..., **the stage's result}``.

    The task gets the stage's timeout (``orchestration.timeouts``) and its retries after transient errors
    (``orchestration.retry_delays``); its artifacts are published here.

    Args:
        params: the flow's inputs, recorded with a run opened here.
        task_args: what the task takes after ``(config, overrides, run_id)``.
    """
    orchestration = load_settings(config, overrides).orchestration
    attempts = {"timeout_seconds": getattr(orchestration.timeouts, stage),
                "retries": len(orchestration.retry_delays), "retry_delay_seconds": orchestration.retry_delays}
    with tracked_run(stage, config, overrides, run_id, params) as run, progress_artifacts():
        state = stage_task.with_options(**attempts)(config, overrides, run["run_id"], *task_args, return_state=True)
        result = state.result()  # raises the stage's error when it failed
        publish_stage(stage, result, state.message)
        run["summary"] = {stage: result}
        return {"run_id": run["run_id"], **result}
