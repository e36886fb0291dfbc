"""The train flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import train_task


@flow(name="train")
def train_flow(config: str | None = None, overrides: dict[str, Any] | None = None,
               pixels_version: int | None = None, run_id: str | None = None) -> dict:
    """Train, evaluate and register a model on ``pixels`` version ``pixels_version`` (default: the newest)."""
    return run_stage("train", train_task, config, overrides, run_id, {"pixels_version": pixels_version},
                     pixels_version)
