"""The train flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import train_task


@flow(name="train")
def train_flow(config: str | None = None, overrides: dict[str, Any] | None = None,
               pixels_version: int | None = None, run_id: str | None = None,
               drift_flags: list[str] | None = None) -> dict:
    """Train, evaluate and register a model on ``pixels`` version ``pixels_version`` (default: the newest).

    ``drift_flags``: what the run's drift check flagged (None: not checked); see ``train.retrain`` and
    ``drift.action``.
    """
    return run_stage("train", train_task, config, overrides, run_id,
                     {"pixels_version": pixels_version, "drift_flags": drift_flags})
