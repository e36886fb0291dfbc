"""The ingest flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import tracked_run
from tasks.stages import ingest_task


@flow(name="ingest")
def ingest_flow(source: str, config: str | None = None, overrides: dict[str, Any] | None = None,
                run_id: str | None = None) -> dict:
    """Ingest every new image under ``source``; joins ``run_id`` when called by the nightly flow."""
    with tracked_run("ingest", config, overrides, run_id, {"source": source}) as run:
        result = ingest_task(source, config, overrides, run["run_id"])
        run["summary"] = {"ingest": result}
        return {"run_id": run["run_id"], **result}
