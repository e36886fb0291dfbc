"""Infer: a ``pixels`` version + a model version -> the ``predictions`` dataset and table.

Whoever predicts a batch writes its Parquet shard: the driver itself for small datasets (at most
``infer.in_process_max`` images, where starting a pool of actors costs more than it saves), else a
Ray Data pool of ``ShardWriter`` actors, each loading the model once. The driver only collects the
shards' manifest, then streams the rows people query into the ``predictions`` table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from fusion_core.config import Settings
from fusion_core.data.derive import derivation_key, derive_dataset
from fusion_core.data.publish import publish_current
from fusion_core.data.runs import StageResult
from fusion_core.learning import registry
from fusion_core.learning.scoring import labels_of, mismatch, predict_with_embeddings
from fusion_core.progress import Progress
from fusion_core.store import Store
from fusion_core.store.datasets import (array_to_fixed_list, iter_rows, iter_shard_batches, pixels_to_array,
                                        predictions_schema, shard_files, write_shard)

log = logging.getLogger(__name__)

INPUT_COLUMNS = ["image_id", "label", "split", "pixels"]
TABLE_COLUMNS = ["image_id", "label", "split", "predicted", "confidence", "top_k"]  # the predictions table's
WRITE_ROWS = 8192  # rows per predictions shard


class ShardWriter:
    """Loads a model once, then turns pixel batches into predictions shards under the store root.

    Used in-process and as a Ray Data callable: ``writer(batch)`` returns the shard's manifest entry.
    """

    def __init__(self, model_path: str, shape: tuple[int, int, int], classes: list[str], top_k: int,
                 batch_size: int, root: str, prefix: str):
        from fusion_core.learning.model import embedding_model

        self.model = embedding_model(registry.load_published(model_path, compile=False))
        self.shape, self.classes, self.top_k, self.batch_size = tuple(shape), classes, top_k, batch_size
        self.root, self.prefix = root, prefix

    def predict(self, batch: pa.Table) -> pa.Table:
        """The predictions table of a batch of pixel rows."""
        probs, embedding = predict_with_embeddings(self.model, pixels_to_array(batch.column("pixels"), self.shape),
                                                   self.batch_size)
        return predictions_table({"image_id": np.asarray(batch.column("image_id").to_pylist(), dtype=object),
                                  "label": np.asarray(batch.column("label").to_pylist(), dtype=object),
                                  "split": np.asarray(batch.column("split").to_pylist(), dtype=object),
                                  "probs": probs, "embedding": embedding}, self.classes, self.top_k)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        # Named after the batch's first image: an attempt that died before its commit is overwritten by the
        # rerun's shards, not left behind as orphans.
        name = f"{self.prefix}-{batch.column('image_id')[0].as_py()}.parquet"
        entry = write_shard(self.root, name, self.predict(batch))
        return {"path": np.array([entry["path"]]), "num_rows": np.array([entry["num_rows"]])}


def predictions_table(batch: dict[str, np.ndarray], classes: list[str], top_k: int) -> pa.Table:
    """Arrow table of one batch of model output, with predicted names, confidences and top-k labels."""
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
    _require_compatible(store, model, pixels)

    key = derivation_key("pixels", pixels["version"], "model", model["version"], f"top{cfg.top_k}")

    def build() -> tuple[list[dict], dict]:
        writer_args = {"model_path": model["path"], "shape": tuple(pixels["info"]["shape"]),
                       "classes": registry.read_classes(model["path"]), "top_k": cfg.top_k,
                       "batch_size": cfg.batch_size, "root": store.root,
                       "prefix": f"datasets/predictions/{key.replace(':', '-')}"}
        paths = [s["path"] for s in pixels["shards"]]
        in_process = pixels["num_rows"] <= cfg.in_process_max
        log.info("infer: %d images %s", pixels["num_rows"], "in this process" if in_process else "on Ray")
        shards = (_write_in_process(store, paths, writer_args, pixels["num_rows"]) if in_process
                  else _write_on_ray(settings, store, paths, writer_args))
        store.replace_results("predictions", run_id, _table_rows(store, shards, model["version"]))
        return shards, {"pixels_version": pixels["version"], "model_version": model["version"]}

    predictions, reused = derive_dataset(store, "predictions", key, run_id, build)
    publish_current(store, predictions)
    return StageResult(
        "infer",
        counts={"predictions": predictions["num_rows"], "reused": int(reused)},
        outputs={"dataset": "predictions", "version": predictions["version"], "table": "predictions",
                 "table_run_id": predictions["run_id"], "model_version": model["version"],
                 "shards": [s["path"] for s in predictions["shards"]]},
    )


def _require_compatible(store: Store, model: dict, pixels: dict) -> None:
    """Refuse a model whose input shape or classes do not fit the pixels (ValueError naming both)."""
    trained_on = store.get_version("pixels", model["dataset_version"]) or {"info": {}}
    shape = model["config"].get("input_shape") or trained_on["info"].get("shape")
    problem = shape and mismatch(registry.read_classes(model["path"]), shape,
                                 labels_of(store, [s["path"] for s in pixels["shards"]]), pixels["info"]["shape"])
    if problem:
        raise ValueError(f"infer: model v{model['version']} cannot predict pixels v{pixels['version']}: {problem}; "
                         f"train a model on these pixels or set infer.model_version")


def _write_in_process(store: Store, paths: list[str], writer_args: dict, total: int | None = None) -> list[dict]:
    """Predict shard by shard in this process, a bounded batch at a time; returns the manifest."""
    writer = ShardWriter(**writer_args)
    manifest, progress = [], Progress("infer", "images", total=total)
    for path in paths:
        for batch in iter_shard_batches(store.root, path, INPUT_COLUMNS, WRITE_ROWS):
            entry = writer(pa.Table.from_batches([batch]))
            manifest.append({"path": str(entry["path"][0]), "num_rows": int(entry["num_rows"][0])})
            progress.update(manifest[-1]["num_rows"])
    progress.close()
    return manifest


def _write_on_ray(settings: Settings, store: Store, paths: list[str], writer_args: dict) -> list[dict]:
    """Predict on a Ray Data actor pool whose actors write the shards; returns the manifest."""
    from fusion_core.ray_runtime import ensure_ray

    ray = ensure_ray(settings)
    cfg = settings.infer
    fs, files = shard_files(store.root, paths)
    ds = ray.data.read_parquet(files, filesystem=fs, columns=INPUT_COLUMNS)
    # An autoscaling pool (from one actor) leaves a CPU for the Parquet readers on small machines.
    ds = ds.map_batches(ShardWriter, fn_constructor_kwargs=writer_args, batch_format="pyarrow",
                        batch_size=WRITE_ROWS, concurrency=(1, cfg.concurrency),
                        num_gpus=1 if settings.train.use_gpu else 0)
    return [{"path": str(r["path"]), "num_rows": int(r["num_rows"])} for r in ds.iter_rows()]


def _table_rows(store: Store, shards: list[dict], model_version: int) -> Iterator[dict]:
    """The ``predictions`` table's rows, read back from the written shards a batch at a time."""
    for row in iter_rows(store.root, [s["path"] for s in shards], TABLE_COLUMNS, WRITE_ROWS):
        row["model_version"] = model_version
        yield row
