"""Tests for the pure parts of fusion_core.cluster (no store, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_core.cluster import cluster_quality, kmeans_clusters, normalize_rows, summarize_clusters


@pytest.fixture
def blobs():
    """Three tight blobs in 8-D along different directions (rows are L2-normalised by kmeans)."""
    rng = np.random.default_rng(0)
    centers = np.zeros((3, 8))
    centers[0, 0] = centers[1, 3] = centers[2, 6] = 10.0
    x = np.concatenate([c + rng.normal(scale=0.5, size=(30, 8)) for c in centers])
    labels = [name for name in ("a", "b", "c") for _ in range(30)]
    return x, labels


def test_kmeans_recovers_blobs(blobs):
    x, labels = blobs
    assignments, distances = kmeans_clusters(x, 3, seed=0)
    assert assignments.shape == (90,) and assignments.dtype == np.int64
    assert distances.shape == (90,) and distances.dtype == np.float32
    assert set(assignments.tolist()) == {0, 1, 2}
    for start in (0, 30, 60):
        assert len(set(assignments[start:start + 30].tolist())) == 1
    assert (distances >= 0).all()
    assert distances.max() < 1.0  # rows and centroids lie on/inside the unit sphere
    quality = cluster_quality(x, assignments, labels)
    assert quality["nmi"] == pytest.approx(1.0, abs=1e-12)
    assert quality["ari"] == pytest.approx(1.0, abs=1e-12)
    assert quality["silhouette"] > 0.5


def test_kmeans_is_deterministic_for_a_seed(blobs):
    x, _ = blobs
    a1, d1 = kmeans_clusters(x, 3, seed=5)
    a2, d2 = kmeans_clusters(x, 3, seed=5)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(d1, d2)


def test_kmeans_distances_are_to_assigned_normalised_centroid():
    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 0.5]])
    assignments, distances = kmeans_clusters(x, 2, seed=0)
    assert assignments[0] == assignments[1] != assignments[2] == assignments[3]
    np.testing.assert_allclose(distances, 0.0, atol=1e-6)  # scale is removed by normalisation


def test_cluster_quality_without_labels_has_no_nmi(blobs):
    x, _ = blobs
    assignments, _ = kmeans_clusters(x, 3)
    quality = cluster_quality(x, assignments, None)
    assert set(quality) == {"silhouette"}
    partial = cluster_quality(x, assignments, [None] + ["a"] * 89)
    assert set(partial) == {"silhouette"}


def test_cluster_quality_single_cluster_has_no_silhouette():
    x = np.eye(4)
    quality = cluster_quality(x, np.zeros(4, dtype=np.int64), ["a", "a", "b", "b"])
    assert "silhouette" not in quality
    assert quality["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert quality["ari"] == pytest.approx(0.0, abs=1e-12)


def test_summarize_clusters_hand_example():
    assignments = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    labels = ["cat", "cat", "dog", None, None, "dog", "dog", None, "cat"]
    rows = summarize_clusters(assignments, labels)
    assert rows == [
        {"cluster": 0, "size": 3, "top_label": "cat", "purity": 2 / 3},
        {"cluster": 1, "size": 2, "top_label": None, "purity": None},
        {"cluster": 2, "size": 4, "top_label": "dog", "purity": 2 / 3},  # share among labelled members
    ]
    assert all(type(r["cluster"]) is int and type(r["size"]) is int for r in rows)


def test_summarize_clusters_without_labels_and_gaps():
    rows = summarize_clusters(np.array([5, 2, 5]), None)
    assert rows == [{"cluster": 2, "size": 1, "top_label": None, "purity": None},
                    {"cluster": 5, "size": 2, "top_label": None, "purity": None}]


def test_normalize_rows_handles_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = normalize_rows(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(x, [[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])  # input not modified
