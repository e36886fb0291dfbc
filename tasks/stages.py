"""Prefect tasks: one thin wrapper per stage, retries set here.

Each task gets the run's context (``RunContext``: the settings parsed and the store opened once per run,
and the champion the run started with) and the stage's inputs, records the stage against its run, and
calls the stage function. An input version left unset (a single-stage run) means the newest committed
one; the nightly flow always passes the versions its earlier stages returned. A task returns a
``Completed`` state holding the stage's result (``flows/_run.py`` takes the result from it), so its
message can say that a result was reused.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NONE
from prefect.states import Completed, State
from prefect.task_engine import TaskRunTimeoutError

from fusion_core.config import OrchestrationConfig, Settings
from fusion_core.data.runs import RunContext, StageResult, record_stage
from fusion_core.errors import is_transient
from fusion_core.stages.cluster import cluster_predictions
from fusion_core.stages.ingest import ingest_source
from fusion_core.stages.preprocess import preprocess_dataset
from fusion_core.store import Store
from fusion_core.tools.inputs import infer_model_version as _model_version, input_version as _version

REUSED = {"preprocess": ("pixels", "version"), "train": ("model", "model_version"),
          "infer": ("predictions", "version"), "cluster": ("clusters", "version"), "mine": ("mining", "version")}


def _transient(_task, _task_run, state: State) -> bool:
    """Retry condition: the stage failed with a transient error (``fusion_core.errors``), not its timeout."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and not isinstance(error, TaskRunTimeoutError) and is_transient(error)


# Every stage task: after a transient error, one more attempt per delay of ``orchestration.retry_delays``
# (the flows set them from the run's settings; a task called on its own has the defaults); none after others.
_DELAYS = OrchestrationConfig().retry_delays
RETRIES = {"retries": len(_DELAYS), "retry_delay_seconds": _DELAYS, "retry_condition_fn": _transient}


def _run(stage: str, run: RunContext, fn: Callable[[Settings, Store], StageResult]) -> State:
    """Run and record a stage; the returned state holds its result and says when it reused an earlier one."""
    result = record_stage(run.store, run.run_id, stage, lambda: fn(run.settings, run.store))
    return Completed(message=_reuse_message(stage, result), data=result)


def _reuse_message(stage: str, result: dict) -> str | None:
    if stage not in REUSED or not result["counts"].get("reused"):
        return None
    name, key = REUSED[stage]
    return f"reused {name} v{result['outputs'][key]}"


@task(name="ingest", cache_policy=NONE, **RETRIES)
def ingest_task(run: RunContext, source: str) -> State:
    return _run("ingest", run, lambda s, store: ingest_source(s, store, source, run.run_id))


@task(name="preprocess", cache_policy=NONE, **RETRIES)
def preprocess_task(run: RunContext, images_version: int | None) -> State:
    return _run("preprocess", run, lambda s, store: preprocess_dataset(
        s, store, _version(store, "preprocess", "images", images_version), run.run_id))


@task(name="drift", cache_policy=NONE, **RETRIES)
def drift_task(run: RunContext, pixels_version: int | None) -> State:
    from fusion_core.stages.drift import check_drift

    return _run("drift", run, lambda s, store: check_drift(
        s, store, _version(store, "drift", "pixels", pixels_version), run.run_id, run.champion_version))


# Ray Train's FailureConfig recovers from worker failures within an attempt; a retry resumes from the
# last checkpoint.
@task(name="train", cache_policy=NONE, **RETRIES)
def train_task(run: RunContext, pixels_version: int | None, drift_flags: list[str] | None = None) -> State:
    from fusion_core.stages.train import train_model

    return _run("train", run, lambda s, store: train_model(
        s, store, _version(store, "train", "pixels", pixels_version), run.run_id, run.champion_version,
        drift_flags))


@task(name="infer", cache_policy=NONE, **RETRIES)
def infer_task(run: RunContext, pixels_version: int | None, model_version: int | None) -> State:
    from fusion_core.stages.infer import infer_dataset

    return _run("infer", run, lambda s, store: infer_dataset(
        s, store, _version(store, "infer", "pixels", pixels_version),
        _model_version(s, store, model_version or run.champion_version), run.run_id))


@task(name="cluster", cache_policy=NONE, **RETRIES)
def cluster_task(run: RunContext, predictions_version: int | None) -> State:
    return _run("cluster", run, lambda s, store: cluster_predictions(
        s, store, _version(store, "cluster", "predictions", predictions_version), run.run_id))


@task(name="mine", cache_policy=NONE, **RETRIES)
def mine_task(run: RunContext, predictions_version: int | None) -> State:
    from fusion_core.stages.mine import mine_predictions

    return _run("mine", run, lambda s, store: mine_predictions(
        s, store, _version(store, "mine", "predictions", predictions_version), run.run_id))


@task(name="report", cache_policy=NONE, **RETRIES)
def report_task(run: RunContext, status: str | None = None) -> State:
    from fusion_core.stages.report import write_report

    return _run("report", run, lambda s, store: write_report(s, store, run.run_id, status))
