"""The report flow: an HTML report of the run it belongs to."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import report_task


@flow(name="report")
def report_flow(config: str | None = None, overrides: dict[str, Any] | None = None,
                run_id: str | None = None, status: str | None = None) -> dict:
    """Write the HTML report of run ``run_id`` (of this flow's own run when unset); ``status`` is the run's
    outcome when the caller knows it before the catalog does."""
    return run_stage("report", report_task, config, overrides, run_id, {"status": status})
