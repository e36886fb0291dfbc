"""Cluster: embeddings from the ``predictions`` dataset -> clusters, their summaries and quality."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa

from fusion_core.config import Settings
from fusion_core.datasets import fixed_list_to_array, read_shards, write_shard
from fusion_core.runs import StageResult
from fusion_core.store import Store

log = logging.getLogger(__name__)


def kmeans_clusters(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K-means (k-means++ init, 4 restarts) on L2-normalised rows.

    Returns:
        ``(assignments, distances to the assigned centroid)``.
    """
    from sklearn.cluster import KMeans

    x = normalize_rows(x)
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    distances = np.linalg.norm(x - model.cluster_centers_[model.labels_], axis=1)
    return model.labels_.astype(np.int64), distances.astype(np.float32)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cluster_quality(x: np.ndarray, assignments: np.ndarray, labels: list | None, seed: int = 0) -> dict:
    """Silhouette on normalised rows (sampled to 5,000), and NMI / ARI where labels exist."""
    from sklearn import metrics

    out = {}
    if len(set(assignments.tolist())) > 1:
        out["silhouette"] = float(metrics.silhouette_score(normalize_rows(x), assignments,
                                                           sample_size=min(len(x), 5000), random_state=seed))
    if labels is not None and all(v is not None for v in labels):
        out["nmi"] = float(metrics.normalized_mutual_info_score(labels, assignments))
        out["ari"] = float(metrics.adjusted_rand_score(labels, assignments))
    return out


def summarize_clusters(assignments: np.ndarray, labels: list | None) -> list[dict]:
    """Per cluster: size, most common label and its share (purity)."""
    rows = []
    for cluster in sorted(set(assignments.tolist())):
        members = np.flatnonzero(assignments == cluster)
        row = {"cluster": int(cluster), "size": int(len(members)), "top_label": None, "purity": None}
        known = [labels[i] for i in members if labels[i] is not None] if labels is not None else []
        if known:
            top, count = Counter(known).most_common(1)[0]
            row.update(top_label=top, purity=count / len(known))
        rows.append(row)
    return rows


def cluster_predictions(settings: Settings, run_id: str) -> StageResult:
    """Cluster the embeddings of the newest predictions version; idempotent per input and config."""
    store = Store.from_settings(settings)
    preds = store.latest_version("predictions")
    if preds is None:
        raise RuntimeError("cluster: no predictions yet; run infer first")
    key = f"predictions:{preds['version']}:{settings.section_hash('cluster')}"
    done = store.find_version("clusters", key)
    if done:
        log.info("cluster: clusters v%d already exist for %s", done["version"], key)
        return StageResult("cluster", counts={"images": done["num_rows"], "reused": 1, **done["info"]["counts"]},
                           metrics=done["info"]["metrics"],
                           outputs={"dataset": "clusters", "version": done["version"],
                                    "table_run_id": done["run_id"]})
    table = read_shards(store.root, [s["path"] for s in preds["shards"]], columns=["image_id", "label", "embedding"])
    x = fixed_list_to_array(table.column("embedding"))
    labels = table.column("label").to_pylist()
    has_labels = any(v is not None for v in labels)
    k = settings.cluster.k or (len({v for v in labels if v is not None}) if has_labels else 10)
    k = min(k, len(x))
    assignments, distances = kmeans_clusters(x, k, settings.cluster.seed)
    metrics = cluster_quality(x, assignments, labels if has_labels else None, settings.cluster.seed)
    summaries = summarize_clusters(assignments, labels if has_labels else None)
    out = pa.table({"image_id": table.column("image_id"), "cluster": pa.array(assignments, pa.int32()),
                    "distance": pa.array(distances, pa.float32())})
    shard = write_shard(store.root, f"datasets/clusters/{run_id}.parquet", out)
    store.replace_results("cluster_assignments", run_id,
                          out.select(["image_id", "cluster", "distance"]).to_pylist())
    store.replace_results("cluster_summaries", run_id, summaries)
    counts = {"clusters": len(summaries)}
    version = store.commit_version("clusters", [shard], run_id, key=key,
                                   info={"predictions_version": preds["version"], "k": k,
                                         "counts": counts, "metrics": metrics})
    return StageResult("cluster", counts={"images": len(x), "reused": 0, **counts}, metrics=metrics,
                       outputs={"dataset": "clusters", "version": version, "table_run_id": run_id,
                                "tables": ["cluster_assignments", "cluster_summaries"]})
