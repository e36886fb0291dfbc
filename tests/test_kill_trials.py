"""Kill trials (``bench/kill_trials.py``) in small: the preprocess stage, its Ray worker killed at a random moment
inside the stage, then rerun, ends as a clean run does (real `fusion` processes, local Ray, the session's Prefect
server).
Killing the `fusion` process itself is tested in test_preprocess_crash; the full table is the bench's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from kill_trials import run_trials  # noqa: E402


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.prefect
def test_a_killed_stage_reruns_to_the_clean_result(tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    result = run_trials(["preprocess"], driver_trials=0, worker_trials=1, per_class=30, seed=1, workdir=tmp_path,
                        prefect_api=PREFECT_API_URL.value())
    (trial,) = result["trials"]
    assert trial["target"] == "worker" and trial["survived"], trial
    assert (trial["lost_rows"], trial["duplicated_rows"], trial["fsck_errors"]) == (0, 0, 0)
