"""Cluster: embeddings from the ``predictions`` dataset -> clusters, their summaries and quality.

Embeddings are L2-normalised (cosine geometry), optionally reduced (PCA or
whitening), then clustered with Fusion's own k-means (k given, the number of
labels, or chosen by silhouette), scikit-learn's mini-batch k-means for large
N, or HDBSCAN when the number of clusters is unknown (label -1 is noise).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa

from fusion_core.config import ClusterConfig, Settings
from fusion_core.datasets import fixed_list_to_array, read_shards, write_shard
from fusion_core.derive import derivation_key, derive_dataset
from fusion_core.runs import StageResult
from fusion_core.store import Store

log = logging.getLogger(__name__)

NOISE = -1


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def reduce_dimensions(x: np.ndarray, method: str, dim: int) -> np.ndarray:
    """Project onto the top principal components (``pca``) and optionally scale them to unit variance (``whiten``)."""
    if method == "none":
        return x
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    dim = min(dim, len(s))
    projected = centred @ vt[:dim].T
    if method == "whiten":
        projected /= np.maximum(s[:dim] / np.sqrt(max(len(x) - 1, 1)), 1e-12)
    return projected


def _squared_distances(x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = x_sq[:, None] - 2.0 * (x @ centers.T) + (centers * centers).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_plus_plus(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [x[rng.integers(len(x))]]
    closest = _squared_distances(x, x_sq, np.stack(centers))[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        pick = rng.choice(len(x), p=closest / total) if total > 0 else rng.integers(len(x))
        centers.append(x[pick])
        closest = np.minimum(closest, _squared_distances(x, x_sq, x[pick][None])[:, 0])
    return np.stack(centers)


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 3, max_iter: int = 100,
           tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding, best of ``n_init`` restarts (lowest inertia).

    Returns:
        ``(assignments (N,), centers (k, D))``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    x_sq = (x * x).sum(axis=1)
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centers = _kmeans_plus_plus(x, x_sq, k, rng)
        for _ in range(max_iter):
            d = _squared_distances(x, x_sq, centers)
            labels = d.argmin(axis=1)
            counts = np.bincount(labels, minlength=k)
            onehot = np.zeros((len(x), k), dtype=np.float32)
            onehot[np.arange(len(x)), labels] = 1.0
            new = (onehot.T @ x) / np.maximum(counts, 1)[:, None]
            empty = counts == 0
            if empty.any():  # re-seed empty clusters at the points farthest from their centre
                far = np.argsort(-d[np.arange(len(x)), labels])[: empty.sum()]
                new[empty] = x[far]
            shift = float(((new - centers) ** 2).sum())
            centers = new
            if shift <= tol * float((centers ** 2).sum() + 1e-12):
                break
        d = _squared_distances(x, x_sq, centers)
        labels = d.argmin(axis=1)
        inertia = float(d[np.arange(len(x)), labels].sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers)
    return best[1].astype(np.int64), best[2]


def choose_k(x: np.ndarray, k_min: int, k_max: int, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The k in ``[k_min, k_max]`` with the best silhouette (sampled to 3,000 points)."""
    from sklearn.metrics import silhouette_score

    scores = {}
    for k in range(k_min, min(k_max, len(x) - 1) + 1):
        labels, _ = kmeans(x, k, seed, n_init=1)
        scores[k] = float(silhouette_score(x, labels, sample_size=min(len(x), 3000), random_state=seed))
    return max(scores, key=scores.get), scores


def cluster_embeddings(x: np.ndarray, cfg: ClusterConfig, n_labels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cluster rows of ``x`` as configured.

    Returns:
        ``(assignments, distance of each row to its cluster's centre, info)``; noise rows
        (HDBSCAN) get cluster -1 and their distance to the nearest centre.
    """
    from sklearn.cluster import HDBSCAN, MiniBatchKMeans

    x = reduce_dimensions(normalize_rows(x), cfg.reduce, cfg.pca_dim).astype(np.float32)
    info: dict = {"method": cfg.method, "reduce": cfg.reduce}
    if cfg.method == "hdbscan":
        labels = HDBSCAN(min_cluster_size=cfg.min_cluster_size, copy=True).fit_predict(x).astype(np.int64)
    else:
        k = cfg.k if isinstance(cfg.k, int) else n_labels or 10
        if cfg.k == "auto":
            k, info["silhouette_by_k"] = choose_k(x, cfg.k_min, cfg.k_max, cfg.seed)
        k = min(k, len(x))
        info["k"] = k
        if cfg.method == "minibatch_kmeans":
            labels = MiniBatchKMeans(n_clusters=k, random_state=cfg.seed, n_init=3).fit_predict(x).astype(np.int64)
        else:
            labels, _ = kmeans(x, k, cfg.seed)
    ids = sorted(set(labels.tolist()) - {NOISE})
    if not ids:
        return labels, np.zeros(len(x), dtype=np.float32), info
    centers = np.stack([x[labels == c].mean(axis=0) for c in ids])
    d = np.sqrt(_squared_distances(x, (x * x).sum(axis=1), centers))
    index = {c: i for i, c in enumerate(ids)}
    own = np.array([index.get(c, -1) for c in labels])
    distances = np.where(own >= 0, d[np.arange(len(x)), np.maximum(own, 0)], d.min(axis=1))
    return labels, distances.astype(np.float32), info


def cluster_accuracy(labels: list, assignments: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    names = sorted(set(labels))
    clusters = sorted(set(assignments.tolist()))
    table = np.zeros((len(clusters), len(names)), dtype=np.int64)
    for c, l in zip(assignments.tolist(), labels):
        table[clusters.index(c), names.index(l)] += 1
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(labels))


def cluster_quality(x: np.ndarray, assignments: np.ndarray, labels: list | None, seed: int = 0) -> dict:
    """Silhouette and Davies-Bouldin on normalised rows (noise excluded); NMI, ARI and cluster accuracy where labels exist."""
    from sklearn import metrics

    out = {}
    kept = assignments != NOISE
    xs, cs = normalize_rows(x)[kept], assignments[kept]
    if len(set(cs.tolist())) > 1:
        out["silhouette"] = float(metrics.silhouette_score(xs, cs, sample_size=min(len(xs), 5000), random_state=seed))
        out["davies_bouldin"] = float(metrics.davies_bouldin_score(xs, cs))
    if labels is not None and all(v is not None for v in labels):
        out["nmi"] = float(metrics.normalized_mutual_info_score(labels, assignments))
        out["ari"] = float(metrics.adjusted_rand_score(labels, assignments))
        out["cluster_accuracy"] = cluster_accuracy(labels, assignments)
    out["noise_fraction"] = float((~kept).mean())
    return out


def summarize_clusters(assignments: np.ndarray, labels: list | None, distances: np.ndarray | None = None,
                       image_ids: list[str] | None = None, keep: int = 5) -> list[dict]:
    """Per cluster: size, most common label and its share (purity), top labels, exemplars and outliers.

    Exemplars are the images nearest the cluster's centre, outliers the farthest.
    """
    rows = []
    for cluster in sorted(set(assignments.tolist())):
        members = np.flatnonzero(assignments == cluster)
        row = {"cluster": int(cluster), "size": int(len(members)), "top_label": None, "purity": None,
               "top_labels": None, "exemplars": None, "outliers": None}
        known = [labels[i] for i in members if labels[i] is not None] if labels is not None else []
        if known:
            common = Counter(known).most_common(3)
            row.update(top_label=common[0][0], purity=common[0][1] / len(known),
                       top_labels={name: count for name, count in common})
        if distances is not None and image_ids is not None:
            order = members[np.argsort(distances[members], kind="stable")]
            row.update(exemplars=[image_ids[i] for i in order[:keep]],
                       outliers=[image_ids[i] for i in order[::-1][:keep]])
        rows.append(row)
    return rows


def cluster_predictions(settings: Settings, store: Store, predictions_version: int, run_id: str) -> StageResult:
    """Cluster the embeddings of ``predictions`` version ``predictions_version``; idempotent per input and config."""
    cfg = settings.cluster
    preds = store.require_version("predictions", predictions_version)

    def build() -> tuple[list[dict], dict]:
        table = read_shards(store.root, [s["path"] for s in preds["shards"]],
                            columns=["image_id", "label", "embedding"])
        x = fixed_list_to_array(table.column("embedding"))
        ids, labels = table.column("image_id").to_pylist(), table.column("label").to_pylist()
        labelled = labels if any(v is not None for v in labels) else None
        n_labels = len({v for v in labels if v is not None})
        assignments, distances, info = cluster_embeddings(x, cfg, n_labels)
        metrics = cluster_quality(x, assignments, labelled, cfg.seed)
        summaries = summarize_clusters(assignments, labelled, distances, ids, cfg.exemplars)
        out = pa.table({"image_id": table.column("image_id"), "cluster": pa.array(assignments, pa.int32()),
                        "distance": pa.array(distances, pa.float32())})
        shard = write_shard(store.root, f"datasets/clusters/{run_id}.parquet", out)
        store.replace_results("cluster_assignments", run_id, out.to_pylist())
        store.replace_results("cluster_summaries", run_id, summaries)
        counts = {"clusters": len([s for s in summaries if s["cluster"] != NOISE]),
                  "noise": int((assignments == NOISE).sum())}
        return [shard], {"predictions_version": preds["version"], **info, "counts": counts, "metrics": metrics}

    key = derivation_key("predictions", preds["version"], settings.section_hash("cluster"))
    clusters, reused = derive_dataset(store, "clusters", key, run_id, build)
    info = clusters["info"]
    return StageResult("cluster", counts={"images": clusters["num_rows"], "reused": int(reused), **info["counts"]},
                       metrics=info["metrics"],
                       outputs={"dataset": "clusters", "version": clusters["version"],
                                "table_run_id": clusters["run_id"], "method": info["method"], "k": info.get("k"),
                                "tables": ["cluster_assignments", "cluster_summaries"]})
