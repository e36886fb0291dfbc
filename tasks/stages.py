"""Prefect tasks: one thin wrapper per stage, retries set here.

This is the boundary where Prefect's serialisable parameters (a config name, overrides, versions)
become objects: each task builds the settings and opens the store once, records the stage against
its run, and calls the stage function with ``(settings, store, inputs)``. An input version left
unset (a single-stage run) means the newest committed one; the nightly flow always passes the
versions its earlier stages returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from fusion_core.cluster import cluster_predictions
from fusion_core.config import Settings, load_settings
from fusion_core.ingest import ingest_source
from fusion_core.preprocess import preprocess_dataset
from fusion_core.runs import StageResult, record_stage
from fusion_core.store import Store

Overrides = dict[str, Any] | None
NEEDS = {"images": "ingest", "pixels": "preprocess", "predictions": "infer"}  # dataset -> stage that makes it


def _run(stage: str, config: str | None, overrides: Overrides, run_id: str,
         fn: Callable[[Settings, Store], StageResult]) -> dict:
    settings = load_settings(config, overrides)
    store = Store.from_settings(settings)
    return record_stage(store, run_id, stage, lambda: fn(settings, store))


def _version(store: Store, stage: str, dataset: str, version: int | None) -> int:
    """``version``, or the newest committed version of ``dataset`` when it is None."""
    if version is not None:
        return version
    latest = store.latest_version(dataset)
    if latest is None:
        raise LookupError(f"{stage}: no {dataset} dataset in the store at {store.root} yet; "
                          f"run {NEEDS[dataset]} first")
    return latest["version"]


def _model_version(settings: Settings, store: Store, version: int | None) -> int:
    """The model to infer with: ``infer.model_version`` when set (pinned), else ``version`` (the nightly
    flow passes the champion after its training), else the champion."""
    chosen = settings.infer.model_version or version
    if chosen is None:
        champion = store.champion()
        if champion is None:
            raise LookupError(f"infer: no champion model in the store at {store.root} yet; run train first")
        chosen = champion["version"]
    return chosen


@task(name="ingest", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def ingest_task(config: str | None, overrides: Overrides, run_id: str, source: str) -> dict:
    return _run("ingest", config, overrides, run_id, lambda s, store: ingest_source(s, store, source, run_id))


@task(name="preprocess", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def preprocess_task(config: str | None, overrides: Overrides, run_id: str, images_version: int | None) -> dict:
    return _run("preprocess", config, overrides, run_id, lambda s, store: preprocess_dataset(
        s, store, _version(store, "preprocess", "images", images_version), run_id))


@task(name="train", retries=0, cache_policy=NONE)  # Ray Train's FailureConfig handles worker failures
def train_task(config: str | None, overrides: Overrides, run_id: str, pixels_version: int | None) -> dict:
    from fusion_core.train import train_model

    return _run("train", config, overrides, run_id, lambda s, store: train_model(
        s, store, _version(store, "train", "pixels", pixels_version), run_id))


@task(name="infer", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def infer_task(config: str | None, overrides: Overrides, run_id: str, pixels_version: int | None,
               model_version: int | None) -> dict:
    from fusion_core.infer import infer_dataset

    return _run("infer", config, overrides, run_id, lambda s, store: infer_dataset(
        s, store, _version(store, "infer", "pixels", pixels_version), _model_version(s, store, model_version),
        run_id))


@task(name="cluster", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def cluster_task(config: str | None, overrides: Overrides, run_id: str, predictions_version: int | None) -> dict:
    return _run("cluster", config, overrides, run_id, lambda s, store: cluster_predictions(
        s, store, _version(store, "cluster", "predictions", predictions_version), run_id))


@task(name="report", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def report_task(config: str | None, overrides: Overrides, run_id: str) -> dict:
    from fusion_core.report import write_report

    return _run("report", config, overrides, run_id, lambda s, store: write_report(s, store, run_id))
