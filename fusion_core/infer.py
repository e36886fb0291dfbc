"""Infer: the ``pixels`` dataset + the champion model -> the ``predictions`` dataset and table.

Ray Data ``map_batches`` runs a pool of ``Predictor`` actors, each loading the
model once; the driver streams the results into Parquet shards and the
``predictions`` table.
"""

from __future__ import annotations

import json
import logging
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from fusion_core.config import Settings
from fusion_core.datasets import (array_to_fixed_list, pixels_to_array, predictions_schema, shard_uris,
                                  write_shard)
from fusion_core.runs import StageResult
from fusion_core.store import Store

log = logging.getLogger(__name__)


def read_classes(model_path: str) -> list[str]:
    """Class names saved beside a model file."""
    fs, path = pafs.FileSystem.from_uri(model_path.rsplit("/", 1)[0] + "/classes.json")
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read())


class Predictor:
    """A Ray Data callable: loads the model once, then maps pixel batches to predictions."""

    def __init__(self, model_path: str, shape: tuple[int, int, int]):
        from fusion_core.model import embedding_model, load_model
        from fusion_core.train import local_copy

        with tempfile.TemporaryDirectory() as tmp:
            self.model = embedding_model(load_model(local_copy(model_path, tmp)))
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


def infer_dataset(settings: Settings, run_id: str) -> StageResult:
    """Predict every image of the newest pixels version with the champion (or ``infer.model_version``).

    Idempotent per (pixels version, model version): an existing result is reused.
    """
    from fusion_core.ray_runtime import ensure_ray

    store = Store.from_settings(settings)
    pixels = store.latest_version("pixels")
    version = settings.infer.model_version
    model = store.get_model(version) if version else store.champion()
    if pixels is None or model is None:
        raise RuntimeError("infer: needs a pixels dataset and a trained model; run preprocess and train first")
    key = f"pixels:{pixels['version']}:model:{model['version']}:top{settings.infer.top_k}"
    done = store.find_version("predictions", key)
    if done:
        log.info("infer: predictions v%d already exist for %s", done["version"], key)
        return _result(done, model, reused=True)

    ray = ensure_ray(settings)
    cfg = settings.infer
    classes = read_classes(model["path"])
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
    store.commit_version("predictions", shards, run_id, key=key,
                                   info={"pixels_version": pixels["version"], "model_version": model["version"]})
    return _result(store.find_version("predictions", key), model, reused=False)


def _result(version: dict, model: dict, reused: bool) -> StageResult:
    return StageResult(
        "infer",
        counts={"predictions": version["num_rows"], "reused": int(reused)},
        outputs={"dataset": "predictions", "version": version["version"], "table": "predictions",
                 "table_run_id": version["run_id"], "model_version": model["version"],
                 "shards": [s["path"] for s in version["shards"]]},
    )
