"""The nightly flow: every stage chained, each as a subflow of one run.

Each stage works on the versions the stage before it returned, so what one run trains, infers and
clusters is fixed by its own ingest and preprocess, whatever else commits to the store meanwhile.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._run import tracked_run
from flows.cluster import cluster_flow
from flows.infer import infer_flow
from flows.ingest import ingest_flow
from flows.preprocess import preprocess_flow
from flows.report import report_flow
from flows.train import train_flow


@flow(name="nightly")
def nightly_flow(source: str, config: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Ingest what is new under ``source``, then preprocess, train, infer, cluster and write the report.

    Returns:
        ``{"run_id": ..., "<stage>": stage result, ...}``.
    """
    with tracked_run("nightly", config, overrides, None, {"source": source}) as run:
        rid = run["run_id"]
        ingest = ingest_flow(source, config, overrides, run_id=rid)
        preprocess = preprocess_flow(config, overrides, images_version=ingest["outputs"]["version"], run_id=rid)
        pixels = preprocess["outputs"]["version"]
        train = train_flow(config, overrides, pixels_version=pixels, run_id=rid)
        infer = infer_flow(config, overrides, pixels_version=pixels,
                           model_version=train["outputs"]["champion_version"], run_id=rid)
        cluster = cluster_flow(config, overrides, predictions_version=infer["outputs"]["version"], run_id=rid)
        report = report_flow(config, overrides, run_id=rid)
        results = {"ingest": ingest, "preprocess": preprocess, "train": train, "infer": infer,
                   "cluster": cluster, "report": report}
        run["summary"] = {stage: {k: v for k, v in r.items() if k != "run_id"} for stage, r in results.items()}
        return {"run_id": rid, **run["summary"]}
