"""Mine: a ``predictions`` version -> the ``mining`` dataset and the ``findings`` table.

What is wrong in the collection, from what inference stored (``fusion_core.learning.mining``): near-duplicate
sets, and those that leak between the training data and the holdout; likely label errors (confident learning
on out-of-sample probabilities), with the label the probabilities suggest; outliers (the most unique images);
each image's hardness and mistakenness; poor images by their quality flags (``fusion_core.imaging.quality``,
from the stored pixels of the images the predictions came from). People's decisions in force apply: excluded
images are not mined, and corrected labels replace the given ones. The pixel statistics are computed by one
Ray task per images shard; the rest runs in one Ray task, which reads the predictions shards and writes one
mining shard: the driver holds neither the embeddings nor the rows, and streams the flagged images into the
``findings`` table from the shard.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusion_core.config import MineConfig, Settings
from fusion_core.data.derive import derivation_key, derive_dataset
from fusion_core.data.publish import publish_current
from fusion_core.data.runs import StageResult
from fusion_core.imaging.quality import image_stats, quality_flags, thumbnail_distance, thumbnails
from fusion_core.learning import mining, registry
from fusion_core.store import Store
from fusion_core.store.datasets import fixed_list_to_array, iter_rows, read_shard, read_shards, write_shard
from fusion_core.store.decisions import Decisions

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("split", pa.string()),
    pa.field("predicted", pa.string(), nullable=False),
    pa.field("duplicate_set", pa.int64(), nullable=False),  # -1: none
    pa.field("leak", pa.bool_(), nullable=False),
    pa.field("nearest_id", pa.string()),
    pa.field("nearest_similarity", pa.float32()),
    pa.field("uniqueness", pa.float32()),
    pa.field("outlier", pa.bool_(), nullable=False),
    pa.field("label_issue", pa.bool_(), nullable=False),
    pa.field("label_quality", pa.float32()),  # null: unlabelled
    pa.field("suggested", pa.string()),
    pa.field("hardness", pa.float32(), nullable=False),
    pa.field("mistakenness", pa.float32()),
    pa.field("quality", pa.string()),  # quality flags, comma-separated; null: none
], metadata={"fusion.dataset": "mining"})


def mine_predictions(settings: Settings, store: Store, predictions_version: int, run_id: str) -> StageResult:
    """Mine ``predictions`` version ``predictions_version``; idempotent per input and ``mine`` settings."""
    cfg = settings.mine
    preds = store.require_version("predictions", predictions_version)
    model = store.get_model(preds["info"]["model_version"])
    decisions = store.decisions()
    pixels = store.require_version("pixels", preds["info"]["pixels_version"])
    images = store.require_version("images", pixels["info"]["images_version"])

    def build() -> tuple[list[dict], dict]:
        from fusion_core.ray_runtime import ensure_ray

        ray = ensure_ray(settings)
        stats = ray.remote(_image_stats).options(num_cpus=1)
        quality = [stats.remote(store.root, s["path"]) for s in images["shards"]]
        task = ray.remote(_mine_shards).options(num_cpus=1)
        shard, counts = ray.get(task.remote(store.root, [s["path"] for s in preds["shards"]], quality,
                                            registry.read_classes(model["path"]), cfg, decisions,
                                            f"datasets/mining/{run_id}.parquet"))
        store.replace_results("findings", run_id, _findings(store, shard["path"]))
        log.info("mine: %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
        return [shard], {"predictions_version": preds["version"], "counts": counts}

    key = derivation_key("predictions", preds["version"], settings.section_hash("mine"),
                         *(("decisions", decisions.digest()) if decisions else ()))
    mined, reused = derive_dataset(store, "mining", key, run_id, build)
    publish_current(store, mined)
    return StageResult("mine", counts={"images": mined["num_rows"], "reused": int(reused), **mined["info"]["counts"]},
                       outputs={"dataset": "mining", "version": mined["version"], "table": "findings",
                                "table_run_id": mined["run_id"]})


def _image_stats(root: str, path: str) -> pa.Table:
    """The quality statistics of one images shard."""
    return image_stats(read_shard(root, path, columns=["image_id", "height", "width", "channels", "pixels"]))


def _mine_shards(root: str, paths: list[str], quality: list, classes: list[str], cfg: MineConfig,
                 decisions: Decisions, out: str) -> tuple[dict, dict]:
    """Read the predictions, mine them with the images' quality statistics (``_image_stats`` results), write
    the mining shard; returns its manifest entry and the counts."""
    import ray

    table = read_shards(root, paths, columns=["image_id", "label", "split", "predicted", "probs", "embedding"])
    table = mine_table(decisions.apply(table), classes, cfg, pa.concat_tables(ray.get(quality)))
    counts = {"duplicate_sets": len(set(table.column("duplicate_set").to_pylist()) - {-1}),
              "in_duplicate_sets": _count(table, "duplicate_set", lambda v: v >= 0),
              "leaking": _count(table, "leak"), "label_issues": _count(table, "label_issue"),
              "outliers": _count(table, "outlier"), "poor_quality": _count(table, "quality", lambda v: v is not None)}
    return write_shard(root, out, table), counts


def _count(table: pa.Table, column: str, test=bool) -> int:
    return sum(1 for v in table.column(column).to_pylist() if test(v))


def mine_table(predictions: pa.Table, classes: list[str], cfg: MineConfig, stats: pa.Table | None = None) -> pa.Table:
    """The mining rows of a predictions table (columns image_id, label, split, predicted, probs, embedding),
    with the quality flags of ``stats`` (``imaging.quality.STATS`` of the collection; None: no flags)."""
    n = predictions.num_rows
    x = fixed_list_to_array(predictions.column("embedding"))
    probs = fixed_list_to_array(predictions.column("probs"))
    ids = np.asarray(predictions.column("image_id").to_pylist(), dtype=object)
    splits = np.asarray(predictions.column("split").to_pylist(), dtype=object)
    index = {name: i for i, name in enumerate(classes)}
    given = np.asarray([index.get(v, -1) for v in predictions.column("label").to_pylist()], dtype=np.int64)
    labelled = given >= 0

    flags, hashes, alike, thumbs = pa.nulls(n, pa.string()), None, None, None
    if stats is not None:
        position = pc.index_in(predictions.column("image_id"), stats.column("image_id"))
        flags = pc.take(pa.array(quality_flags(stats, cfg.quality), pa.string()), position)
        hashes = pc.take(stats.column("phash"), position).fill_null(0).to_numpy()
        thumbs = thumbnails(pc.take(stats.column("thumb"), position))
        alike = lambda a, b: thumbnail_distance(thumbs[a], thumbs[b]) <= cfg.copy_distance  # noqa: E731
    sets, leak, outlier = np.full(n, -1), np.zeros(n, bool), np.zeros(n, bool)
    nearest, similarity, unique = np.full(n, None, dtype=object), np.full(n, np.nan), np.full(n, np.nan)
    if n >= 2:
        sims, idx = mining.neighbours(x, cfg.neighbours, cfg.exact_max)
        nearest_thumbs = None if thumbs is None else mining.neighbours(thumbs, cfg.neighbours, cfg.exact_max,
                                                                       cosine=False)[1]
        sets = mining.duplicate_sets(x, sims, idx, cfg.near_duplicate_similarity, cfg.near_duplicate_ratio, hashes,
                                     nearest_thumbs, alike)
        leak = np.isin(sets, mining.leaking_sets(sets, splits)) & (sets >= 0)
        nearest, similarity, unique = ids[idx[:, 0]], sims[:, 0], mining.uniqueness(sims)
        if cfg.outlier_fraction:
            outlier = unique >= np.quantile(unique, 1 - cfg.outlier_fraction)

    issue, quality, mistaken = np.zeros(n, bool), np.full(n, np.nan), np.full(n, np.nan)
    suggested = np.full(n, None, dtype=object)
    if _enough_labels(given[labelled]):
        y = given[labelled]
        oos = mining.out_of_sample_probs(x[labelled], y, cfg.folds, cfg.seed)
        issue[labelled], quality[labelled], best = mining.label_issues(y, oos)
        suggested[labelled] = np.asarray(classes, dtype=object)[best]
        mistaken[labelled] = mining.mistakenness(probs[labelled], y)
    return pa.table({
        "image_id": predictions.column("image_id"), "label": predictions.column("label"),
        "split": predictions.column("split"), "predicted": predictions.column("predicted"),
        "duplicate_set": pa.array(sets, pa.int64()), "leak": pa.array(leak),
        "nearest_id": pa.array(nearest, pa.string()), "nearest_similarity": _floats(similarity),
        "uniqueness": _floats(unique), "outlier": pa.array(outlier), "label_issue": pa.array(issue),
        "label_quality": _floats(quality), "suggested": pa.array(suggested, pa.string()),
        "hardness": pa.array(mining.hardness(probs)), "mistakenness": _floats(mistaken), "quality": flags,
    }, schema=SCHEMA)


def _floats(values: np.ndarray) -> pa.Array:
    """float32 values, NaN as null."""
    values = np.asarray(values, dtype=np.float32)
    return pa.array(values, pa.float32(), mask=np.isnan(values))


def _enough_labels(labels: np.ndarray) -> bool:
    """Whether out-of-sample probabilities can be had: two classes or more, each with at least two images."""
    counts = np.bincount(labels) if len(labels) else np.array([])
    counts = counts[counts > 0]
    return len(counts) >= 2 and counts.min() >= 2


def _findings(store: Store, shard: str) -> Iterator[dict]:
    """The flagged images of a mining shard as ``findings`` rows, streamed: every member of a duplicate set (and,
    when the set leaks, a ``leak`` row too), each likely label error, each outlier and each poor image."""
    for r in iter_rows(store.root, [shard], SCHEMA.names):
        row = {"image_id": r["image_id"], "label": r["label"], "split": r["split"], "duplicate_set": None,
               "suggested": None, "flags": None}
        if r["duplicate_set"] >= 0:
            found = {**row, "score": r["nearest_similarity"], "duplicate_set": r["duplicate_set"]}
            yield {**found, "kind": "duplicate"}
            if r["leak"]:
                yield {**found, "kind": "leak"}
        if r["label_issue"]:
            yield {**row, "kind": "label_error", "score": 1 - r["label_quality"], "suggested": r["suggested"]}
        if r["outlier"]:
            yield {**row, "kind": "outlier", "score": r["uniqueness"]}
        if r["quality"]:
            yield {**row, "kind": "quality", "score": r["quality"].count(",") + 1, "flags": r["quality"]}
