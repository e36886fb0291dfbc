"""The drift flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import drift_task


@flow(name="drift")
def drift_flow(config: str | None = None, overrides: dict[str, Any] | None = None,
               pixels_version: int | None = None, run_id: str | None = None) -> dict:
    """Compare the new images of ``pixels`` version ``pixels_version`` (default: the newest) with the data
    the champion was trained on (the champion when the run started)."""
    return run_stage("drift", drift_task, config, overrides, run_id, {"pixels_version": pixels_version})
