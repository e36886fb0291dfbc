"""The mine flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import mine_task


@flow(name="mine")
def mine_flow(config: str | None = None, overrides: dict[str, Any] | None = None,
              predictions_version: int | None = None, run_id: str | None = None) -> dict:
    """Find duplicates and leaks, likely label errors and outliers in ``predictions`` version
    ``predictions_version`` (default: the newest)."""
    return run_stage("mine", mine_task, config, overrides, run_id, {"predictions_version": predictions_version})
