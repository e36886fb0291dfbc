"""How the flows run a stage: its task gets its timeout from the settings (a timed-out stage is not retried),
and the stages of one run share its settings, parsed once, and the champion it started with."""

import time

import pytest
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.states import Completed

from flows import _run
from flows._run import run_stage, tracked_run
from fusion_core.config import load_settings
from fusion_core.store import Store
from tasks.stages import RETRIES

pytestmark = pytest.mark.prefect


def test_a_stage_past_its_timeout_fails_at_once_and_its_run_is_failed(prefect_harness, tmp_path):
    attempts = []

    @task(name="report", cache_policy=NONE, **RETRIES)
    def slow_report(run):
        attempts.append(run.run_id)
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


def test_the_stages_of_a_run_share_its_settings_and_the_champion_it_started_with(prefect_harness, tmp_path,
                                                                                  monkeypatch):
    """A model promoted by hand while a run goes on does not change what the run's later stages compare with."""
    overrides = {"store.root": str(tmp_path / "store")}
    store = Store.from_settings(load_settings("smoke", overrides))
    first = store.register_model("r0", "seed_cnn", "m1.keras", "k1", 1, {}, {})
    store.set_champion(first, reason="test")
    second = store.register_model("r0", "seed_cnn", "m2.keras", "k2", 1, {}, {})
    parses = []
    monkeypatch.setattr(_run, "load_settings", lambda *args: parses.append(args) or load_settings(*args))
    seen = []

    @task(name="drift", cache_policy=NONE)
    def look(run, step):
        seen.append((step, run.champion_version, run.settings))
        if step == "first":
            run.store.set_champion(second, reason="by hand, while the run goes on")
        return Completed(data={"counts": {}, "metrics": {}, "outputs": {}})

    @flow(name="drift")
    def stage_flow(step, run_id):
        return run_stage("drift", look, "smoke", overrides, run_id, {"step": step})

    @flow(name="nightly")
    def two_stages():
        with tracked_run("nightly", "smoke", overrides, None, {}) as run:
            stage_flow("first", run.run_id)
            stage_flow("second", run.run_id)

    two_stages()
    assert [(step, champion) for step, champion, _ in seen] == [("first", first), ("second", first)]
    assert seen[0][2] is seen[1][2] and len(parses) == 1
    assert store.champion_version() == second
