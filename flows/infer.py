"""The infer flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import infer_task


@flow(name="infer")
def infer_flow(config: str | None = None, overrides: dict[str, Any] | None = None,
               pixels_version: int | None = None, model_version: int | None = None,
               run_id: str | None = None) -> dict:
    """Predict ``pixels`` version ``pixels_version`` (default: the newest) with model ``model_version``
    (default: ``infer.model_version``, else the champion)."""
    return run_stage("infer", infer_task, config, overrides, run_id,
                     {"pixels_version": pixels_version, "model_version": model_version})
