"""Tests for the pure parts of fusion_core.stages.cluster (no store, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_core.config import ClusterConfig
from fusion_core.learning.clustering import (NOISE, choose_k, cluster_accuracy, cluster_embeddings, cluster_quality,
                                             kmeans, normalize_rows, reduce_dimensions, summarize_clusters)


@pytest.fixture
def blobs():
    """Three tight blobs in 8-D along different directions (clustering normalises rows)."""
    rng = np.random.default_rng(0)
    centers = np.zeros((3, 8))
    centers[0, 0] = centers[1, 3] = centers[2, 6] = 10.0
    x = np.concatenate([c + rng.normal(scale=0.5, size=(30, 8)) for c in centers])
    labels = [name for name in ("a", "b", "c") for _ in range(30)]
    return x, labels


def _same_partition(assignments, sizes=(30, 30, 30)):
    start = 0
    for size in sizes:
        assert len(set(assignments[start:start + size].tolist())) == 1
        start += size
    assert len(set(assignments.tolist())) == len(sizes)


@pytest.mark.parametrize("method", ["kmeans", "minibatch_kmeans", "hdbscan"])
def test_every_method_recovers_blobs(blobs, method):
    x, labels = blobs
    assignments, distances, info = cluster_embeddings(x, ClusterConfig(method=method, min_cluster_size=5), 3)
    _same_partition(assignments)
    assert distances.shape == (90,) and distances.dtype == np.float32 and (distances >= 0).all()
    quality = cluster_quality(x, assignments, labels)
    assert quality["nmi"] == pytest.approx(1.0) and quality["ari"] == pytest.approx(1.0)
    assert quality["cluster_accuracy"] == 1.0 and quality["silhouette"] > 0.5
    assert quality["davies_bouldin"] < 0.5 and quality["noise_fraction"] == 0.0


def test_kmeans_is_deterministic_for_a_seed_and_matches_sklearn_inertia(blobs):
    from sklearn.cluster import KMeans

    x = normalize_rows(blobs[0])
    a1, c1 = kmeans(x, 3, seed=5)
    a2, c2 = kmeans(x, 3, seed=5)
    np.testing.assert_array_equal(a1, a2)
    ours = ((x - c1[a1]) ** 2).sum()
    theirs = KMeans(3, n_init=3, random_state=0).fit(x).inertia_
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_kmeans_reseeds_empty_clusters():
    x = np.array([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5, dtype=np.float32)
    assignments, centers = kmeans(x, 3, seed=0)
    assert centers.shape == (3, 2) and np.isfinite(centers).all()
    assert set(assignments.tolist()) <= {0, 1, 2}


def test_k_auto_picks_the_best_silhouette(blobs):
    x = normalize_rows(blobs[0])
    k, scores = choose_k(x, 2, 6)
    assert k == 3 and set(scores) == {2, 3, 4, 5, 6}
    _, _, info = cluster_embeddings(blobs[0], ClusterConfig(k="auto", k_max=6), 3)
    assert info["k"] == 3


def test_k_defaults_to_number_of_labels(blobs):
    _, _, info = cluster_embeddings(blobs[0], ClusterConfig(), 3)
    assert info["k"] == 3
    _, _, info = cluster_embeddings(blobs[0], ClusterConfig(k=4), 3)
    assert info["k"] == 4


def test_reduce_pca_and_whiten():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) * np.array([10, 5, 1, 0.1, 0.1, 0.1])
    assert reduce_dimensions(x, "none", 2) is x
    pca = reduce_dimensions(x, "pca", 2)
    assert pca.shape == (200, 2) and pca[:, 0].var() > pca[:, 1].var()
    white = reduce_dimensions(x, "whiten", 3)
    np.testing.assert_allclose(white.var(axis=0, ddof=1), 1.0, rtol=1e-6)


def test_cluster_accuracy_uses_best_matching():
    assert cluster_accuracy(["a", "a", "b", "b"], np.array([1, 1, 0, 0])) == 1.0
    assert cluster_accuracy(["a", "a", "b", "b"], np.array([0, 0, 0, 1])) == 0.75


def test_cluster_quality_without_labels_has_no_nmi(blobs):
    x, _ = blobs
    assignments, _ = kmeans(normalize_rows(x), 3)
    assert set(cluster_quality(x, assignments, None)) == {"silhouette", "davies_bouldin", "noise_fraction"}
    assert "nmi" not in cluster_quality(x, assignments, [None] + ["a"] * 89)


def test_cluster_quality_excludes_noise_from_silhouette():
    x = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [-1, -1]], dtype=float)
    quality = cluster_quality(x, np.array([0, 0, 1, 1, NOISE]), None)
    assert quality["noise_fraction"] == 0.2 and quality["silhouette"] > 0.9


def test_summarize_clusters_hand_example():
    assignments = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    labels = ["cat", "cat", "dog", None, None, "dog", "dog", None, "cat"]
    distances = np.array([0.3, 0.1, 0.2, 0.5, 0.4, 0.9, 0.1, 0.2, 0.3])
    ids = [f"i{n}" for n in range(9)]
    rows = summarize_clusters(assignments, labels, distances, ids, keep=2)
    assert [(r["cluster"], r["size"], r["top_label"]) for r in rows] == [(0, 3, "cat"), (1, 2, None), (2, 4, "dog")]
    assert rows[0]["purity"] == 2 / 3 and rows[2]["purity"] == 2 / 3  # share among labelled members
    assert rows[0]["top_labels"] == {"cat": 2, "dog": 1}
    assert rows[0]["exemplars"] == ["i1", "i2"] and rows[0]["outliers"] == ["i0", "i2"]
    assert rows[2]["exemplars"] == ["i6", "i7"] and rows[2]["outliers"] == ["i5", "i8"]


def test_summarize_clusters_without_labels_or_distances():
    rows = summarize_clusters(np.array([5, 2, 5]), None)
    assert [(r["cluster"], r["size"], r["top_label"], r["exemplars"]) for r in rows] == [(2, 1, None, None),
                                                                                         (5, 2, None, None)]


def test_normalize_rows_handles_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = normalize_rows(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    np.testing.assert_array_equal(x, [[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])  # input not modified


def test_label_scores_match_scikit_learn_on_random_partitions():
    from sklearn import metrics

    from fusion_core.learning.clustering import contingency, label_scores

    rng = np.random.default_rng(3)
    for n, k, c in ((500, 4, 3), (2000, 10, 10), (50, 7, 2)):
        assignments = rng.integers(0, k, n)
        labels = [f"l{v}" for v in rng.integers(0, c, n)]
        scores = label_scores(contingency(assignments, labels))
        assert scores["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(labels, assignments), abs=1e-9)
        assert scores["ari"] == pytest.approx(metrics.adjusted_rand_score(labels, assignments), abs=1e-9)
    one = label_scores(contingency(np.zeros(5, int), ["a"] * 5))
    assert one == {"nmi": 1.0, "ari": 1.0, "cluster_accuracy": 1.0}


def test_fitted_clusters_assign_new_rows_to_the_nearest_centre(blobs):
    from fusion_core.learning.clustering import fit_clusters

    x, _ = blobs
    clusters, labels, _ = fit_clusters(x[::2], ClusterConfig(reduce="pca", pca_dim=4), 3)
    assignments, distances = clusters.nearest(clusters.prepare(x))
    _same_partition(assignments)
    np.testing.assert_array_equal(assignments[::2], labels)
    assert distances.dtype == np.float32 and (distances >= 0).all()
