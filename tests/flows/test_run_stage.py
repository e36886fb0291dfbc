"""A stage's task gets its timeout from the settings, and a timed-out stage is not retried."""

import time

import pytest
from prefect import flow, task
from prefect.cache_policies import NONE

from flows._run import run_stage
from fusion_core.store import Store
from tasks.stages import RETRIES

pytestmark = pytest.mark.prefect


def test_a_stage_past_its_timeout_fails_at_once_and_its_run_is_failed(prefect_harness, tmp_path):
    attempts = []

    @task(name="report", cache_policy=NONE, **RETRIES)
    def slow_report(config, overrides, run_id):
        attempts.append(run_id)
        for _ in range(300):  # Python code between waits, as in a stage waiting on Ray tasks one by one
            time.sleep(0.1)

    @flow(name="report")
    def slow_report_flow():
        return run_stage("report", slow_report, "smoke", overrides, None, {})

    overrides = {"store.root": str(tmp_path / "store"), "orchestration.timeouts.report": 1}
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        slow_report_flow()
    assert time.monotonic() - started < 20
    assert len(attempts) == 1
    (run,) = Store(str(tmp_path / "store")).list_runs()
    assert run["status"] == "failed" and "TimeoutError" in run["summary"]["error"]
