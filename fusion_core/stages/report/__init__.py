"""Report: a self-contained HTML page (plus PNGs) of what one run did, under ``<store root>/reports/<run id>/``.

The page leads with what changed (the promotion decision and why, drift, the
model against the champion and the run against the previous one), then follows
the stages: run summary, drift checks, ingestion and quarantine, imputation
examples, training curves, holdout evaluation, an embedding map, cluster
quality with exemplars and outliers, and what mining found. A section whose stage
is not part of the run says so. Stages that reused earlier results (a rerun) are
shown with those results. Plots are drawn with matplotlib's Agg canvas, imported
only when a plot is drawn.

``sections`` (and ``imputation``, ``clusters``, ``mining``) build each section from the catalog, ``plots`` draws
the figures and ``page`` renders the HTML; ``gallery`` writes pages of captioned thumbnails beside it, and
``history`` the runs index, ``reports/index.html``, above them.
"""

from __future__ import annotations

import logging

from fusion_core import uri
from fusion_core.config import Settings
from fusion_core.data.runs import StageResult
from fusion_core.stages.report import sections
from fusion_core.stages.report.clusters import cluster_exemplars
from fusion_core.stages.report.gallery import write_gallery
from fusion_core.stages.report.history import write_runs_index
from fusion_core.stages.report.imputation import imputation
from fusion_core.stages.report.mining import mining_findings
from fusion_core.stages.report.page import render_report
from fusion_core.store import Store

log = logging.getLogger(__name__)

REPORT_DIR = "reports"


def write_report(settings: Settings, store: Store, run_id: str, status: str | None = None) -> StageResult:
    """Write the HTML report of ``run_id`` and its PNGs to ``<store root>/reports/<run id>/``.

    Args:
        settings: the run's settings (the stage interface; the report reads everything from ``store``).
        store: the open store holding the run.
        run_id: the run to report on.
        status: the run's outcome when the caller knows it before the catalog does (the nightly flow
            writes its report last, once every other stage has completed or one has failed).

    Raises:
        LookupError: no such run in the store.
    """
    run = store.get_run(run_id)
    if run is None:
        raise LookupError(f"no run {run_id!r} in {store.root}; see `fusion runs`")
    run["status"] = status or run["status"]
    stages = {s["stage"]: s for s in run["stages"] if s["status"] == "completed"}
    outputs = {name: s["outputs"] or {} for name, s in stages.items()}
    model = store.get_model(outputs["train"]["model_version"]) if "train" in outputs else None
    clusters = store.get_version("clusters", outputs.get("cluster", {}).get("version"))
    predictions = store.get_version("predictions", outputs.get("infer", {}).get("version")
                                    or (clusters or {}).get("info", {}).get("predictions_version"))
    pixels = store.get_version("pixels", outputs.get("preprocess", {}).get("version"))
    shown = [
        sections.what_changed(run, store.previous_run(run_id), model, store),
        sections.run_summary(run),
        sections.drift_checks(stages.get("drift")),
        sections.ingestion(store, run_id, stages.get("ingest")),
        imputation(store, pixels),
        sections.training(store, model, stages.get("train")),
        sections.evaluation(model),
        sections.embedding_map(store, predictions, clusters),
        cluster_exemplars(store, run_id, predictions, outputs.get("cluster"),
                          (stages.get("cluster") or {}).get("metrics")),
        mining_findings(store, run_id, stages.get("mine")),
    ]
    gallery = write_gallery(store, run_id, outputs, predictions)
    figures = {name: data for section in shown for name, data in section.figures.items()}
    links = [(gallery, "Gallery of findings, confusions and clusters")] if gallery else []
    document = render_report(f"Fusion run {run_id}", f"{run['flow']} flow, {run['status']}; store {store.root}",
                             [(section.title, section.body) for section in shown],
                             [*links, ("../index.html", "All runs")])
    for name, data in [*figures.items(), ("index.html", document.encode())]:  # the page last: its images exist first
        uri.write_bytes(store.path(REPORT_DIR, run_id, name), data)
    path = store.path(REPORT_DIR, run_id, "index.html")
    runs_index = write_runs_index(store, store.path(REPORT_DIR), run)
    plots = sorted(name for name in figures if not name.startswith("thumbs/"))
    log.info("report: %s (%d figures); all runs: %s", path, len(plots), runs_index)
    return StageResult("report", counts={"sections": sum(section.body is not None for section in shown),
                                         "images": len(plots), "thumbnails": len(figures) - len(plots)},
                       outputs={"report": path, "images": plots, "runs_index": runs_index,
                                **({"gallery": store.path(REPORT_DIR, run_id, gallery)} if gallery else {})})
