"""Prefect tasks: one thin wrapper per stage, recording it against its run. Retries are set here."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from fusion_core.cluster import cluster_predictions
from fusion_core.config import load_settings
from fusion_core.ingest import ingest_source
from fusion_core.preprocess import preprocess_dataset
from fusion_core.runs import record_stage
from fusion_core.store import Store

Overrides = dict[str, Any] | None


def _run(stage: str, config: str | None, overrides: Overrides, run_id: str, fn) -> dict:
    settings = load_settings(config, overrides)
    return record_stage(Store.from_settings(settings), run_id, stage, lambda: fn(settings))


@task(name="ingest", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def ingest_task(source: str, config: str | None, overrides: Overrides, run_id: str) -> dict:
    return _run("ingest", config, overrides, run_id, lambda s: ingest_source(s, source, run_id))


@task(name="preprocess", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def preprocess_task(config: str | None, overrides: Overrides, run_id: str) -> dict:
    return _run("preprocess", config, overrides, run_id, lambda s: preprocess_dataset(s, run_id))


@task(name="train", retries=0, cache_policy=NONE)  # Ray Train's FailureConfig handles worker failures
def train_task(config: str | None, overrides: Overrides, run_id: str) -> dict:
    from fusion_core.train import train_model

    return _run("train", config, overrides, run_id, lambda s: train_model(s, run_id))


@task(name="infer", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def infer_task(config: str | None, overrides: Overrides, run_id: str) -> dict:
    from fusion_core.infer import infer_dataset

    return _run("infer", config, overrides, run_id, lambda s: infer_dataset(s, run_id))


@task(name="cluster", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def cluster_task(config: str | None, overrides: Overrides, run_id: str) -> dict:
    return _run("cluster", config, overrides, run_id, lambda s: cluster_predictions(s, run_id))


@task(name="report", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def report_task(config: str | None, overrides: Overrides, run_id: str) -> dict:
    from fusion_core.report import write_report

    return _run("report", config, overrides, run_id, lambda s: write_report(s, run_id))
