"""The nightly flow: every stage chained, each as a subflow of one run.

Each stage works on the versions the stage before it returned, so what one run trains, infers and
clusters is fixed by its own ingest and preprocess, whatever else commits to the store meanwhile; drift
and train compare with the champion of the run's start, and infer uses the champion train leaves, whatever
is promoted by hand meanwhile. The stages share the run's settings, parsed once.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow

from flows._run import tracked_run
from flows.cluster import cluster_flow
from flows.drift import drift_flow
from flows.infer import infer_flow
from flows.ingest import ingest_flow
from flows.mine import mine_flow
from flows.notify import notify_failure
from flows.preprocess import preprocess_flow
from flows.report import report_flow
from flows.train import train_flow

log = logging.getLogger(__name__)


# A run must end before the next night's starts: while it runs, the deployment's concurrency limit cancels
# the next one (deploy/prefect.yaml).
NIGHTLY_TIMEOUT_S = 20 * 3600


@flow(name="nightly", timeout_seconds=NIGHTLY_TIMEOUT_S, on_failure=[notify_failure], on_crashed=[notify_failure])
def nightly_flow(source: str, config: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Ingest what is new under ``source``, then preprocess, check drift, train, infer, cluster, mine and write the
    report.

    Returns:
        ``{"run_id": ..., "<stage>": stage result, ...}``.
    """
    with tracked_run("nightly", config, overrides, None, {"source": source}) as run:
        rid = run.run_id
        try:
            results = _stages(source, config, overrides, rid)
        except Exception:
            _report_failure(config, overrides, rid)
            raise
        # The report comes last, when the run's outcome is known, and leads with what changed.
        results["report"] = report_flow(config, overrides, run_id=rid, status="completed")
        run.summary = {stage: {k: v for k, v in r.items() if k != "run_id"} for stage, r in results.items()}
        return {"run_id": rid, **run.summary}


def _stages(source: str, config: str | None, overrides: dict[str, Any] | None, rid: str) -> dict:
    """Every stage but the report, each on the versions the one before returned."""
    ingest = ingest_flow(source, config, overrides, run_id=rid)
    preprocess = preprocess_flow(config, overrides, images_version=ingest["outputs"]["version"], run_id=rid)
    pixels = preprocess["outputs"]["version"]
    drift = drift_flow(config, overrides, pixels_version=pixels, run_id=rid)
    train = train_flow(config, overrides, pixels_version=pixels, run_id=rid,
                       drift_flags=drift["outputs"]["flagged"] if drift["outputs"]["checks"] else None)
    infer = infer_flow(config, overrides, pixels_version=pixels,
                       model_version=train["outputs"]["champion_version"], run_id=rid)
    cluster = cluster_flow(config, overrides, predictions_version=infer["outputs"]["version"], run_id=rid)
    mine = mine_flow(config, overrides, predictions_version=infer["outputs"]["version"], run_id=rid)
    return {"ingest": ingest, "preprocess": preprocess, "drift": drift, "train": train, "infer": infer,
            "cluster": cluster, "mine": mine}


def _report_failure(config: str | None, overrides: dict[str, Any] | None, rid: str) -> None:
    """A report of a failed run (what it did before failing); its own failure is only logged."""
    try:
        report_flow(config, overrides, run_id=rid, status="failed")
    except Exception as err:  # the run's own error is the one to raise
        log.warning("nightly: no report for failed run %s: %s", rid, err)
