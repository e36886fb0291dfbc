"""The cluster flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import run_stage
from tasks.stages import cluster_task


@flow(name="cluster")
def cluster_flow(config: str | None = None, overrides: dict[str, Any] | None = None,
                 predictions_version: int | None = None, run_id: str | None = None) -> dict:
    """Cluster the embeddings of ``predictions`` version ``predictions_version`` (default: the newest)."""
    return run_stage("cluster", cluster_task, config, overrides, run_id,
                     {"predictions_version": predictions_version})
