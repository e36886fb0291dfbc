"""Kill trials (``bench/kill_trials.py``) in small: the preprocess stage killed at a random moment, once through
its driver and once through a Ray worker, then rerun, ends as a clean run does (real `fusion` processes, local
Ray, a Prefect server)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from kill_trials import run_trials  # noqa: E402


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.prefect
def test_a_killed_stage_reruns_to_the_clean_result(tmp_path):
    result = run_trials(["preprocess"], driver_trials=1, worker_trials=1, per_class=30, seed=1, workdir=tmp_path)
    for trial in result["trials"]:
        assert trial["survived"], trial
        assert (trial["lost_rows"], trial["duplicated_rows"], trial["fsck_errors"]) == (0, 0, 0)
    assert {t["target"] for t in result["trials"]} == {"driver", "worker"}
