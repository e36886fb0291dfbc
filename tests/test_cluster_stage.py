"""The cluster stage on a hand-built predictions dataset: in memory, and streamed shard by shard above
``cluster.sample_size`` (no Ray, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fusion_core.config import load_settings
from fusion_core.stages.cluster import cluster_predictions
from fusion_core.store import Store
from fusion_core.store.datasets import array_to_fixed_list, predictions_schema, write_shard

NAMES = ["a", "b", "c"]


def _predictions(root: str, shards: int = 3, per_shard: int = 120) -> int:
    """A predictions version of three well separated blobs of 16-d embeddings, labelled by blob."""
    rng = np.random.default_rng(0)
    store = Store(root)
    manifest = []
    for s in range(shards):
        blob = rng.integers(0, 3, per_shard)
        embedding = np.eye(16, dtype=np.float32)[blob * 5] * 10 + rng.normal(scale=0.3, size=(per_shard, 16))
        probs = np.full((per_shard, 3), 1 / 3, np.float32)
        table = pa.table({
            "image_id": [f"{s:02d}-{i:04d}" for i in range(per_shard)], "label": [NAMES[b] for b in blob],
            "split": ["test"] * per_shard, "predicted": [NAMES[b] for b in blob],
            "confidence": pa.array(probs.max(axis=1), pa.float32()),
            "top_k": [[NAMES[b]] for b in blob], "probs": array_to_fixed_list(probs),
            "embedding": array_to_fixed_list(embedding.astype(np.float32)),
        }, schema=predictions_schema(3, 16))
        manifest.append(write_shard(root, f"datasets/predictions/p{s}.parquet", table))
    return store.commit_version("predictions", manifest, "r0")


@pytest.mark.parametrize("sample_size", [100_000, 150])
def test_clusters_in_memory_and_streamed(tmp_path, sample_size):
    root = str(tmp_path / "store")
    version = _predictions(root)
    settings = load_settings(None, {"store.root": root, "cluster.sample_size": sample_size, "cluster.exemplars": 2})
    store = Store(root)
    result = cluster_predictions(settings, store, version, "run")
    assert result.counts["images"] == 360 and result.counts["clusters"] == 3 and result.counts["noise"] == 0
    assert result.metrics["nmi"] == pytest.approx(1.0) and result.metrics["cluster_accuracy"] == 1.0
    assert result.metrics["silhouette"] > 0.5
    clusters = store.get_version("clusters", result.outputs["version"])
    assert len(clusters["shards"]) == (1 if sample_size > 360 else 3)
    assert clusters["info"].get("sample") == (None if sample_size > 360 else 150)
    rows = store.query("cluster_assignments", "run")
    assert len(rows) == 360 and len({r["image_id"] for r in rows}) == 360
    summaries = sorted(store.query("cluster_summaries", "run"), key=lambda s: s["cluster"])
    assert sum(s["size"] for s in summaries) == 360 and all(s["purity"] == 1.0 for s in summaries)
    by_id = {r["image_id"]: r for r in rows}
    for s in summaries:
        assert len(s["exemplars"]) == len(s["outliers"]) == 2
        near, far = (by_id[i]["distance"] for i in (s["exemplars"][0], s["outliers"][0]))
        assert near <= far and all(by_id[i]["cluster"] == s["cluster"] for i in s["exemplars"] + s["outliers"])
    again = cluster_predictions(settings, store, version, "run-2")
    assert again.counts["reused"] == 1 and again.outputs["version"] == result.outputs["version"]
