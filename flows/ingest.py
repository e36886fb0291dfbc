"""The ingest flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import ingest_task


@flow(name="ingest")
def ingest_flow(source: str, config: str | None = None, overrides: dict[str, Any] | None = None,
                run_id: str | None = None) -> dict:
    """Ingest every new image under ``source``; joins ``run_id`` when called by the nightly flow."""
    return run_stage("ingest", ingest_task, config, overrides, run_id, {"source": source})
