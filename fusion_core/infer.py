"""Infer: the ``pixels`` dataset + the champion model -> the ``predictions`` dataset and table.

Ray Data ``map_batches`` runs a pool of ``Predictor`` actors, each loading the
model once; the driver streams the results into Parquet shards and the
``predictions`` table.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from fusion_core import registry
from fusion_core.config import Settings
from fusion_core.datasets import (array_to_fixed_list, pixels_to_array, predictions_schema, shard_uris,
                                  write_shard)
from fusion_core.derive import derivation_key, derive_dataset
from fusion_core.runs import StageResult
from fusion_core.store import Store

log = logging.getLogger(__name__)


class Predictor:
    """A Ray Data callable: loads the model once, then maps pixel batches to predictions."""

    def __init__(self, model_path: str, shape: tuple[int, int, int]):
        from fusion_core.model import embedding_model

        self.model = embedding_model(registry.load_published(model_path))
        self.shape = tuple(shape)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        x = pixels_to_array(batch.column("pixels"), self.shape)
        probs, embedding = (np.asarray(t, dtype=np.float32) for t in self.model(x, training=False))
        return {"image_id": np.asarray(batch.column("image_id").to_pylist(), dtype=object),
                "label": np.asarray(batch.column("label").to_pylist(), dtype=object),
                "split": np.asarray(batch.column("split").to_pylist(), dtype=object),
                "probs": probs, "embedding": embedding}


def predictions_table(batch: dict[str, np.ndarray], classes: list[str], top_k: int) -> pa.Table:
    """Arrow table of one batch of Predictor output, with predicted names, confidences and top-k labels."""
    probs = batch["probs"]
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    best = ranked[:, 0]
    schema = predictions_schema(probs.shape[1], batch["embedding"].shape[1])
    return pa.table({
        "image_id": pa.array(batch["image_id"].tolist(), pa.string()),
        "label": pa.array(batch["label"].tolist(), pa.string()),
        "split": pa.array(batch["split"].tolist(), pa.string()),
        "predicted": pa.array([classes[i] for i in best], pa.string()),
        "confidence": pa.array(probs[np.arange(len(best)), best], pa.float32()),
        "top_k": pa.array([[classes[i] for i in row] for row in ranked], pa.list_(pa.string())),
        "probs": array_to_fixed_list(probs),
        "embedding": array_to_fixed_list(batch["embedding"]),
    }, schema=schema)


def infer_dataset(settings: Settings, store: Store, pixels_version: int, model_version: int,
                  run_id: str) -> StageResult:
    """Predict every image of ``pixels`` version ``pixels_version`` with model ``model_version``.

    Idempotent per (pixels version, model version): an existing result is reused.
    """
    cfg = settings.infer
    pixels = store.require_version("pixels", pixels_version)
    model = store.get_model(model_version)
    if model is None:
        raise LookupError(f"infer: no model version {model_version} in the store at {store.root}")

    def build() -> tuple[list[dict], dict]:
        from fusion_core.ray_runtime import ensure_ray

        ray = ensure_ray(settings)
        classes = registry.read_classes(model["path"])
        shape = tuple(pixels["info"]["shape"])
        ds = ray.data.read_parquet(shard_uris(store.root, [s["path"] for s in pixels["shards"]]),
                                   columns=["image_id", "label", "split", "pixels"])
        # An autoscaling pool (from one actor) leaves a CPU for the Parquet readers on small machines.
        ds = ds.map_batches(Predictor, fn_constructor_kwargs={"model_path": model["path"], "shape": shape},
                            batch_format="pyarrow", batch_size=cfg.batch_size, concurrency=(1, cfg.concurrency),
                            num_gpus=1 if settings.train.use_gpu else 0)
        shards, rows = [], []
        for i, batch in enumerate(ds.iter_batches(batch_size=8192, batch_format="numpy")):
            table = predictions_table(batch, classes, cfg.top_k)
            shards.append(write_shard(store.root, f"datasets/predictions/{run_id}-{i:05d}.parquet", table))
            rows += table.select(["image_id", "label", "split", "predicted", "confidence", "top_k"]).to_pylist()
            log.info("infer: %d images predicted", len(rows))
        for row in rows:
            row["model_version"] = model["version"]
        store.replace_results("predictions", run_id, rows)
        return shards, {"pixels_version": pixels["version"], "model_version": model["version"]}

    key = derivation_key("pixels", pixels["version"], "model", model["version"], f"top{cfg.top_k}")
    predictions, reused = derive_dataset(store, "predictions", key, run_id, build)
    return StageResult(
        "infer",
        counts={"predictions": predictions["num_rows"], "reused": int(reused)},
        outputs={"dataset": "predictions", "version": predictions["version"], "table": "predictions",
                 "table_run_id": predictions["run_id"], "model_version": model["version"],
                 "shards": [s["path"] for s in predictions["shards"]]},
    )
