"""Clustering algorithms over embedding arrays (numpy; scikit-learn where named), and their quality.

Embeddings are L2-normalised (cosine geometry), optionally reduced (PCA or
whitening), then clustered with Fusion's own k-means (k given, the number of
labels, or chosen by silhouette), scikit-learn's mini-batch k-means, or HDBSCAN
when the number of clusters is unknown (label -1 is noise). Quality against
labels (NMI, ARI, cluster accuracy) comes from a contingency table, so it can be
counted batch by batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from fusion_core.config import ClusterConfig

NOISE = -1


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def fit_reduction(x: np.ndarray, method: str, dim: int) -> dict | None:
    """The top principal components of ``x`` (``pca``), scaled to unit variance (``whiten``); None for ``none``."""
    if method == "none":
        return None
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    dim = min(dim, len(s))
    scale = np.maximum(s[:dim] / np.sqrt(max(len(x) - 1, 1)), 1e-12) if method == "whiten" else np.ones(dim)
    return {"mean": mean, "components": vt[:dim], "scale": scale}


def apply_reduction(x: np.ndarray, reduction: dict | None) -> np.ndarray:
    """Rows of ``x`` in the space ``fit_reduction`` found (unchanged for None)."""
    if reduction is None:
        return x
    return (x - reduction["mean"]) @ reduction["components"].T / reduction["scale"]


def reduce_dimensions(x: np.ndarray, method: str, dim: int) -> np.ndarray:
    """Project onto the top principal components (``pca``) and optionally scale them to unit variance (``whiten``)."""
    return apply_reduction(x, fit_reduction(x, method, dim))


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
            members = sparse.csr_matrix((np.ones(len(x), np.float32), (labels, np.arange(len(x)))), shape=(k, len(x)))
            new = np.asarray(members @ x) / np.maximum(counts, 1)[:, None]
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


@dataclass
class Clusters:
    """Clusters found in a set of embeddings: how a row is normalised and reduced, and each cluster's centre."""

    reduction: dict | None
    ids: list[int]
    centers: np.ndarray
    info: dict

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Rows of embeddings in the clustering space (normalised, reduced)."""
        return apply_reduction(normalize_rows(x), self.reduction).astype(np.float32)

    def nearest(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest cluster of each prepared row and the distance to its centre."""
        d = np.sqrt(_squared_distances(z, (z * z).sum(axis=1), self.centers))
        best = d.argmin(axis=1)
        return np.asarray(self.ids, dtype=np.int64)[best], d[np.arange(len(z)), best].astype(np.float32)


def fit_clusters(x: np.ndarray, cfg: ClusterConfig, n_labels: int) -> tuple[Clusters, np.ndarray, np.ndarray]:
    """Find clusters in rows of ``x`` as configured.

    Returns:
        ``(clusters, each row's cluster (-1: HDBSCAN noise), the rows prepared)``.
    """
    from sklearn.cluster import HDBSCAN, MiniBatchKMeans

    normalised = normalize_rows(x)
    reduction = fit_reduction(normalised, cfg.reduce, cfg.pca_dim)
    z = apply_reduction(normalised, reduction).astype(np.float32, copy=False)
    info: dict = {"method": cfg.method, "reduce": cfg.reduce}
    if cfg.method == "hdbscan":
        labels = HDBSCAN(min_cluster_size=cfg.min_cluster_size, copy=True).fit_predict(z).astype(np.int64)
    else:
        k = cfg.k if isinstance(cfg.k, int) else n_labels or 10
        if cfg.k == "auto":
            k, info["silhouette_by_k"] = choose_k(z, cfg.k_min, cfg.k_max, cfg.seed)
        k = min(k, len(z))
        info["k"] = k
        if cfg.method == "minibatch_kmeans":
            labels = MiniBatchKMeans(n_clusters=k, random_state=cfg.seed, n_init=3).fit_predict(z).astype(np.int64)
        else:
            labels, _ = kmeans(z, k, cfg.seed)
    ids = sorted(set(labels.tolist()) - {NOISE})
    centers = (np.stack([z[labels == c].mean(axis=0) for c in ids]) if ids
               else np.zeros((0, z.shape[1]), dtype=np.float32))
    return Clusters(reduction, ids, centers, info), labels, z


def cluster_embeddings(x: np.ndarray, cfg: ClusterConfig, n_labels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cluster rows of ``x`` as configured.

    Returns:
        ``(assignments, distance of each row to its cluster's centre, info)``; noise rows
        (HDBSCAN) get cluster -1 and their distance to the nearest centre.
    """
    clusters, labels, z = fit_clusters(x, cfg, n_labels)
    if not clusters.ids:
        return labels, np.zeros(len(z), dtype=np.float32), clusters.info
    d = np.sqrt(_squared_distances(z, (z * z).sum(axis=1), clusters.centers))
    index = {c: i for i, c in enumerate(clusters.ids)}
    own = np.array([index.get(c, -1) for c in labels])
    distances = np.where(own >= 0, d[np.arange(len(z)), np.maximum(own, 0)], d.min(axis=1))
    return labels, distances.astype(np.float32), clusters.info


def contingency(assignments, labels) -> np.ndarray:
    """Counts of (cluster, label) pairs: one row per cluster, one column per label, both sorted."""
    pairs = Counter(zip(np.asarray(assignments).tolist(), labels))
    return contingency_of(pairs)


def contingency_of(pairs: Counter) -> np.ndarray:
    """The contingency table of ``{(cluster, label): count}`` (rows: clusters, columns: labels, sorted)."""
    clusters = sorted({c for c, _ in pairs})
    names = sorted({name for _, name in pairs})
    table = np.zeros((len(clusters), len(names)), dtype=np.int64)
    for (c, name), count in pairs.items():
        table[clusters.index(c), names.index(name)] += count
    return table


def label_scores(table: np.ndarray) -> dict:
    """NMI (arithmetic mean of entropies), ARI and cluster accuracy (Hungarian matching) of a contingency table."""
    from scipy.optimize import linear_sum_assignment

    table = np.asarray(table, dtype=np.float64)
    n = table.sum()
    rows, cols = table.sum(axis=1), table.sum(axis=0)

    def entropy(counts: np.ndarray) -> float:
        p = counts[counts > 0] / n
        return float(-(p * np.log(p)).sum())

    nz = table > 0
    mi = float((table[nz] / n * (np.log(table[nz] * n) - np.log(np.outer(rows, cols)[nz]))).sum())
    h_clusters, h_labels = entropy(rows), entropy(cols)
    if h_clusters == h_labels == 0:
        nmi = 1.0
    else:
        nmi = max(mi, 0.0) / max((h_clusters + h_labels) / 2, np.finfo(np.float64).eps)

    def pairs(v):
        return v * (v - 1) / 2

    index, expected_a, expected_b = pairs(table).sum(), pairs(rows).sum(), pairs(cols).sum()
    expected = expected_a * expected_b / pairs(n) if n > 1 else 0.0
    top = (expected_a + expected_b) / 2
    ari = 1.0 if top == expected else float((index - expected) / (top - expected))
    matched_rows, matched_cols = linear_sum_assignment(-table)
    return {"nmi": float(nmi), "ari": ari, "cluster_accuracy": float(table[matched_rows, matched_cols].sum() / n)}


def cluster_accuracy(labels: list, assignments: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels (Hungarian)."""
    return label_scores(contingency(assignments, labels))["cluster_accuracy"]


def cluster_quality(x: np.ndarray, assignments: np.ndarray, labels: list | None, seed: int = 0) -> dict:
    """Silhouette and Davies-Bouldin on normalised rows (noise excluded); NMI, ARI and cluster accuracy where labels exist."""
    import sklearn
    from sklearn import metrics

    out = {}
    kept = assignments != NOISE
    normalised = normalize_rows(x)
    xs, cs = (normalised, assignments) if kept.all() else (normalised[kept], assignments[kept])
    if len(np.unique(cs)) > 1:
        with sklearn.config_context(working_memory=64):  # pairwise distances in chunks of 64 MB
            out["silhouette"] = float(metrics.silhouette_score(xs, cs, sample_size=min(len(xs), 5000),
                                                               random_state=seed))
            out["davies_bouldin"] = float(metrics.davies_bouldin_score(xs, cs))
    if labels is not None and all(v is not None for v in labels):
        out.update(label_scores(contingency(assignments, labels)))
    out["noise_fraction"] = float((~kept).mean())
    return out


def summarize_clusters(assignments: np.ndarray, labels: list | None, distances: np.ndarray | None = None,
                       image_ids: list[str] | None = None, keep: int = 5) -> list[dict]:
    """Per cluster: size, most common label and its share (purity), top labels, exemplars and outliers.

    Exemplars are the images nearest the cluster's centre, outliers the farthest.
    """
    tally = Tally(keep)
    tally.add(assignments, labels, distances, image_ids)
    return tally.summaries()


class Tally:
    """Per-cluster counts gathered batch by batch: sizes, labels, and the nearest and farthest images."""

    def __init__(self, keep: int):
        self.keep, self.sizes, self.pairs, self.labelled = keep, Counter(), Counter(), True
        self.near: dict[int, list] = {}
        self.far: dict[int, list] = {}

    def add(self, assignments: np.ndarray, labels: list | None, distances: np.ndarray | None = None,
            image_ids: list[str] | None = None) -> None:
        """Count a batch; exemplars and outliers only when ``distances`` and ``image_ids`` are given."""
        labels = [None] * len(assignments) if labels is None else labels
        self.labelled = self.labelled and all(v is not None for v in labels)
        for cluster in np.unique(assignments).tolist():
            members = np.flatnonzero(assignments == cluster)
            self.sizes[cluster] += len(members)
            self.pairs.update((cluster, labels[i]) for i in members if labels[i] is not None)
            if distances is not None and image_ids is not None:
                found = [(float(distances[i]), image_ids[i]) for i in members]
                self.near[cluster] = sorted(self.near.get(cluster, []) + found)[:self.keep]
                self.far[cluster] = sorted(self.far.get(cluster, []) + found, reverse=True)[:self.keep]

    def summaries(self) -> list[dict]:
        """Rows of the ``cluster_summaries`` table, one per cluster in order."""
        rows = []
        for cluster in sorted(self.sizes):
            labels = Counter({name: n for (c, name), n in self.pairs.items() if c == cluster})
            common = labels.most_common(3)
            rows.append({"cluster": int(cluster), "size": int(self.sizes[cluster]),
                         "top_label": common[0][0] if common else None,
                         "purity": common[0][1] / sum(labels.values()) if common else None,
                         "top_labels": dict(common) if common else None,
                         "exemplars": [i for _, i in self.near[cluster]] if cluster in self.near else None,
                         "outliers": [i for _, i in self.far[cluster]] if cluster in self.far else None})
        return rows
