"""Cluster: embeddings of a ``predictions`` version -> the ``clusters`` dataset, summaries and quality.

Up to ``cluster.sample_size`` images are clustered in memory (``fusion_core.learning.clustering``). A larger
dataset never is: the clusters are found on a uniform sample of that size, then every image is
assigned to its nearest cluster shard by shard, with sizes, labels, exemplars and quality counted
as the shards go by; the driver holds the sample and the centres, not the collection.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusion_core.config import ClusterConfig, Settings
from fusion_core.data.derive import derivation_key, derive_dataset
from fusion_core.data.publish import publish_current
from fusion_core.data.runs import StageResult
from fusion_core.learning.clustering import (NOISE, Clusters, Tally, cluster_embeddings, cluster_quality,
                                             contingency_of, fit_clusters, label_scores, summarize_clusters)
from fusion_core.store import Store
from fusion_core.store.datasets import fixed_list_to_array, iter_rows, read_shard, read_shards, write_shard

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "label", "embedding"]


def cluster_predictions(settings: Settings, store: Store, predictions_version: int, run_id: str) -> StageResult:
    """Cluster the embeddings of ``predictions`` version ``predictions_version``; idempotent per input and config."""
    cfg = settings.cluster
    preds = store.require_version("predictions", predictions_version)

    def build() -> tuple[list[dict], dict]:
        paths = [s["path"] for s in preds["shards"]]
        if preds["num_rows"] <= cfg.sample_size:
            shards, summaries, info = _in_memory(store, paths, cfg, run_id)
        else:
            shards, summaries, info = _streamed(store, paths, preds["num_rows"], cfg, run_id)
        store.replace_results("cluster_assignments", run_id,
                              iter_rows(store.root, [s["path"] for s in shards], ["image_id", "cluster", "distance"]))
        store.replace_results("cluster_summaries", run_id, summaries)
        info["counts"] = {"clusters": len([s for s in summaries if s["cluster"] != NOISE]),
                          "noise": sum(s["size"] for s in summaries if s["cluster"] == NOISE)}
        return shards, {"predictions_version": preds["version"], **info}

    key = derivation_key("predictions", preds["version"], settings.section_hash("cluster"))
    clusters, reused = derive_dataset(store, "clusters", key, run_id, build)
    publish_current(store, clusters)
    info = clusters["info"]
    return StageResult("cluster", counts={"images": clusters["num_rows"], "reused": int(reused), **info["counts"]},
                       metrics=info["metrics"],
                       outputs={"dataset": "clusters", "version": clusters["version"],
                                "table_run_id": clusters["run_id"], "method": info["method"], "k": info.get("k"),
                                "tables": ["cluster_assignments", "cluster_summaries"]})


def _in_memory(store: Store, paths: list[str], cfg: ClusterConfig, run_id: str) -> tuple[list[dict], list, dict]:
    """Every embedding clustered at once; one clusters shard."""
    table = read_shards(store.root, paths, columns=COLUMNS)
    x = fixed_list_to_array(table.column("embedding"))
    ids, labels = table.column("image_id").to_pylist(), table.column("label").to_pylist()
    labelled = labels if any(v is not None for v in labels) else None
    assignments, distances, info = cluster_embeddings(x, cfg, len({v for v in labels if v is not None}))
    info["metrics"] = cluster_quality(x, assignments, labelled, cfg.seed)
    summaries = summarize_clusters(assignments, labelled, distances, ids, cfg.exemplars)
    out = _assignments(table, assignments, distances)
    return [write_shard(store.root, f"datasets/clusters/{run_id}.parquet", out)], summaries, info


def _streamed(store: Store, paths: list[str], total: int, cfg: ClusterConfig,
              run_id: str) -> tuple[list[dict], list, dict]:
    """Clusters found on a sample, then every shard assigned and counted in turn; one clusters shard per shard."""
    sample, names = sample_rows(store, paths, total, cfg.sample_size, cfg.seed)
    n_labels = len(names - {None})
    log.info("cluster: %d images; clusters found on a sample of %d", total, sample.num_rows)
    clusters, _, _ = fit_clusters(fixed_list_to_array(sample.column("embedding")), cfg, n_labels)
    tally, shards = Tally(cfg.exemplars), []
    for i, path in enumerate(paths):
        table = read_shard(store.root, path, columns=COLUMNS)
        assignments, distances = clusters.nearest(clusters.prepare(fixed_list_to_array(table.column("embedding"))))
        tally.add(assignments, table.column("label").to_pylist(), distances, table.column("image_id").to_pylist())
        out = _assignments(table, assignments, distances)
        shards.append(write_shard(store.root, f"datasets/clusters/{run_id}-{i:05d}.parquet", out))
    info = {**clusters.info, "sample": sample.num_rows,
            "metrics": _sample_quality(clusters, sample, cfg.seed, tally if tally.labelled else None)}
    return shards, tally.summaries(), info


def _assignments(table: pa.Table, assignments: np.ndarray, distances: np.ndarray) -> pa.Table:
    """A clusters shard: each image's cluster and its distance to the centre."""
    return pa.table({"image_id": table.column("image_id"), "cluster": pa.array(assignments, pa.int32()),
                     "distance": pa.array(distances, pa.float32())})


def sample_rows(store: Store, paths: list[str], total: int, size: int, seed: int) -> tuple[pa.Table, set]:
    """A uniform random sample of ``size`` rows (image id, label, embedding) of a dataset, read shard by shard,
    and every label the dataset holds (gathered in the same pass)."""
    keep = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    parts, names, start = [], set(), 0
    for path in paths:
        rows = read_shard(store.root, path, columns=COLUMNS)
        names.update(pc.unique(rows.column("label")).to_pylist())
        local = keep[(keep >= start) & (keep < start + rows.num_rows)] - start
        if len(local):
            parts.append(rows.take(local))
        start += rows.num_rows
    return pa.concat_tables(parts), names


def _sample_quality(clusters: Clusters, sample: pa.Table, seed: int, tally: Tally | None) -> dict:
    """Silhouette and Davies-Bouldin on the sample; NMI, ARI and cluster accuracy over every labelled image."""
    x = fixed_list_to_array(sample.column("embedding"))
    assignments, _ = clusters.nearest(clusters.prepare(x))
    metrics = {k: v for k, v in cluster_quality(x, assignments, None, seed).items() if k != "noise_fraction"}
    if tally is not None:
        metrics.update(label_scores(contingency_of(tally.pairs)))
    return {**metrics, "noise_fraction": 0.0}
