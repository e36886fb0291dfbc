"""The preprocess flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import preprocess_task


@flow(name="preprocess")
def preprocess_flow(config: str | None = None, overrides: dict[str, Any] | None = None,
                    images_version: int | None = None, run_id: str | None = None) -> dict:
    """Make the model-ready ``pixels`` of ``images`` version ``images_version`` (default: the newest)."""
    return run_stage("preprocess", preprocess_task, config, overrides, run_id,
                     {"images_version": images_version})
