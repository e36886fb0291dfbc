"""Run bookkeeping shared by the flows: open a run, or join the one a parent flow opened; name the Prefect
flow run after it, and show its stages in Prefect (logs, artifacts, timeouts)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from flows.artifacts import progress_artifacts, publish_run, publish_stage
from flows.flow_run import current_link, name_flow_run
from flows.logs import send_logs_to_prefect
from fusion_core.config import Settings, load_settings
from fusion_core.data.runs import RunContext
from fusion_core.ray_runtime import dashboard_details
from fusion_core.store import Store

# The runs open in this process: the stage flows a nightly run calls join its context, so that a run's
# settings are parsed, its store opened and its champion chosen once.
_open: dict[str, RunContext] = {}


@contextmanager
def tracked_run(flow: str, config: str | None, overrides: dict[str, Any] | None, run_id: str | None,
                params: dict[str, Any]):
    """Yield the run's ``RunContext``. A new run is opened and closed here unless ``run_id`` joins a parent's run.

    A new run takes the store's writer lease (``StoreBusyError`` while another run holds it) and renews its
    heartbeat until it ends, so that a run whose process dies shows as ``abandoned``; its champion is the one
    at that moment.

    The flow run is named after the run (``<run id>-<flow>`` when it joins one); a new run records the
    flow run's id and UI link in its params. The caller may put a summary in the context's ``summary``.
    """
    send_logs_to_prefect()
    if run_id is not None:
        name_flow_run(f"{run_id}-{flow}", run_id)
        yield _open.get(run_id) or _context(run_id, load_settings(config, overrides))  # a report of an earlier run
        return
    settings = load_settings(config, overrides)
    store = Store.from_settings(settings)
    rid = store.start_run(flow, {"config": config, "overrides": overrides, **params, "prefect": current_link()},
                          exclusive=True)
    name_flow_run(rid, rid)
    try:
        with store.heartbeat(rid, details=dashboard_details):
            run = _open[rid] = _context(rid, settings, store)
            yield run
    except BaseException as err:
        store.finish_run(rid, "failed", {"error": f"{type(err).__name__}: {err}"})
        raise
    finally:
        _open.pop(rid, None)
    store.finish_run(rid, "completed", run.summary)
    publish_run(store.get_run(rid), store)


def _context(run_id: str, settings: Settings, store: Store | None = None) -> RunContext:
    store = store or Store.from_settings(settings)
    return RunContext(run_id, settings, store, store.champion_version())


def run_stage(stage: str, stage_task, config: str | None, overrides: dict[str, Any] | None, run_id: str | None,
              inputs: dict[str, Any]) -> dict:
    """Run one stage task as (or within) a run; returns ``{"run_id": ..., **the stage's result}``.

    The task gets the run's context and the stage's ``inputs`` (recorded as the params of a run opened
    here), the stage's timeout (``orchestration.timeouts``) and its retries after transient errors
    (``orchestration.retry_delays``); its artifacts are published here.
    """
    with tracked_run(stage, config, overrides, run_id, inputs) as run, progress_artifacts():
        orchestration = run.settings.orchestration
        attempts = {"timeout_seconds": getattr(orchestration.timeouts, stage),
                    "retries": len(orchestration.retry_delays), "retry_delay_seconds": orchestration.retry_delays}
        state = stage_task.with_options(**attempts)(run, **inputs, return_state=True)
        result = state.result()  # raises the stage's error when it failed
        publish_stage(stage, result, state.message)
        run.summary = {stage: result}
        return {"run_id": run.run_id, **result}
