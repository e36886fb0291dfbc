"""Train: the ``pixels`` dataset -> a registered model version, evaluated on the holdout.

Follows Ray Train's example shape: ``train_loop_per_worker(config)`` (``fusion_core.learning.train_loop``) runs on
every worker under ``MultiWorkerMirroredStrategy`` (when there are several); ``train_model`` is the
driver. Each worker reads its own equal share of the labelled rows straight from the pixels shards
(``feed.share_rows``); the driver never loads the training data.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace

import numpy as np

from fusion_core import uri
from fusion_core.config import Settings
from fusion_core.data.derive import derivation_key, derive_model
from fusion_core.data.runs import StageResult, code_version
from fusion_core.imaging.quality import dhash, thumbnail, thumbnail_distance
from fusion_core.learning import registry
from fusion_core.learning.feed import epoch_steps, share_rows, whitening_filters
from fusion_core.learning.scoring import (class_names, comparison_rows, evaluate_against, labelled_counts,
                                          load_scorer, training_sample)
from fusion_core.learning.train_loop import train_loop_per_worker, train_run_name
from fusion_core.recipes import Recipe
from fusion_core.store import Store
from fusion_core.store.datasets import pixels_to_array, read_shard
from fusion_core.store.decisions import Decisions

log = logging.getLogger(__name__)


def train_model(settings: Settings, store: Store, pixels_version: int, run_id: str, champion_version: int | None,
                drift_flags: list[str] | None = None) -> StageResult:
    """Train on ``pixels`` version ``pixels_version``, evaluate on its test split, register and maybe promote.

    Args:
        champion_version: the champion the run started with (None: none yet): the model a challenger must
            beat, and the one a warm start starts from.
        drift_flags: the drift checks this run flagged (None: not checked). With ``train.retrain:
            on_drift`` a run that checked and flagged none keeps the champion without training; with
            ``drift.action: block_promotion`` a flagged run does not promote.

    People's decisions in force when the stage starts (excluded images, corrected labels) apply to the
    training data and the holdout, for the challenger and the champion alike; a change of them is new training
    data. Holdout images with the perceptual hash and the colour thumbnail of a training image move to the
    training data (``holdout_copies``), so that no near-copy of a training image judges the model. Skips training when a
    model already exists for the same data, decisions and training config (unless ``train.retrain`` is
    ``always``).
    """
    cfg = settings.train
    pixels = store.require_version("pixels", pixels_version)
    champion = store.get_model(champion_version) if champion_version is not None else None
    decisions = store.decisions()
    if (cfg.retrain == "on_drift" and drift_flags == [] and champion is not None
            and _same_decisions(champion, decisions)):
        log.info("train: no drift flagged and no new decisions: champion v%d kept, not retrained", champion["version"])
        return _result(champion, champion_version, trained=False,
                       promotion="no drift flagged: champion kept, not retrained")
    blocked = (f"drift flagged ({', '.join(drift_flags)}) blocks promotion"
               if drift_flags and settings.drift.action == "block_promotion" else None)
    key = derivation_key("pixels", pixels["version"], settings.section_hash("train"),
                         "copy_distance", str(settings.mine.copy_distance),  # the duplicate-aware holdout's
                         *(("decisions", decisions.digest()) if decisions else ()))
    promotion = []

    def build() -> dict:
        from fusion_core.ray_runtime import ensure_ray

        # The trainer's driver side runs in a Ray task that takes no CPU (the workers need them), so that
        # this process never imports TensorFlow.
        ray = ensure_ray(settings)
        fit = ray.remote(_fit_and_register_in_task).options(num_cpus=0)
        # The code version is the driver's: the task may run on a node that got Fusion through runtime_env.
        model = ray.get(fit.remote(settings, store.reopen_args(), pixels, champion, decisions, key, run_id,
                                   code_version()))
        if model is None:
            raise RuntimeError(f"train: the training of run {run_id} ended without registering a model")
        promotion.append(registry.promote_if_better(store, model["version"], cfg.promote_margin, cfg.promote_alpha,
                                                    blocked))
        log.info("train: model v%d %s", model["version"], promotion[0])
        return model

    model, reused = derive_model(store, key, build, reuse=cfg.retrain != "always")
    return _result(store.get_model(model["version"]), champion_version, trained=not reused,
                   promotion=promotion[0] if promotion else "reused: trained earlier on the same data and settings")


def _fit_and_register_in_task(settings: Settings, store_args: tuple[str, str], pixels: dict, champion: dict | None,
                              decisions: Decisions, key: str, run_id: str, code: str) -> dict:
    return _fit_and_register(settings, Store(*store_args), pixels, champion, decisions, key, run_id, code)


def _fit_and_register(settings: Settings, store: Store, pixels: dict, champion: dict | None, decisions: Decisions,
                      key: str, run_id: str, code: str) -> dict:
    """Fit with Ray Train; its rank-0 worker then publishes the best epoch in float32, evaluates it and registers
    it (``_finish``), so that this process never imports TensorFlow."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    # TensorflowTrainer is this trainer with Ray's TensorFlow backend, whose import imports TensorFlow.
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from fusion_core.learning.tf_backend import TensorflowBackendConfig
    from fusion_core.ray_runtime import ensure_ray, remove_leftover_placement_groups

    cfg = settings.train
    ensure_ray(settings)
    remove_leftover_placement_groups()
    paths = [s["path"] for s in pixels["shards"]]
    classes = class_names(store, paths)
    shape = tuple(pixels["info"]["shape"])
    norm = pixels["info"]["stats"] if pixels["info"].get("scale") == "standardize" else None
    started = time.perf_counter()
    copies = holdout_copies(store, paths, shape, settings.mine.copy_distance)
    people, decisions = decisions, replace(decisions, to_train=copies)
    log.info("train: %d holdout images with a near-copy in the training data moved there", len(decisions.to_train))
    recipe = cfg.resolved_recipe()
    init_from = _warm_start(cfg.init, champion, recipe.model, classes, shape)
    workers = cfg.num_workers
    # Linear scaling: N workers train with N x the batch at N x the rate, or split one global batch.
    batch = recipe.batch_size if recipe.scale_with_workers else max(1, recipe.batch_size // workers)
    rate = recipe.learning_rate * (workers if recipe.scale_with_workers else 1)
    # Each worker reads its own equal share of the rows from the store: no Ray Data pipeline in between.
    counts = labelled_counts(store, paths, ("train", "val"), decisions)
    shares = {split: share_rows(counts[split], workers, cfg.seed) for split in counts}
    steps_per_epoch = epoch_steps(sum(counts["train"]) // workers, batch)
    whitening = None
    if recipe.model == "airbench" and recipe.whitening and not init_from:
        whitening = whitening_filters(training_sample(store, paths, classes, shape, decisions), norm).tolist()
    checkpoints_fs, checkpoints = uri.filesystem(store.path("checkpoints"))  # the store's endpoint, on every worker
    registration = {
        "store_args": store.reopen_args(), "recipe": recipe.as_dict(), "shape": shape, "classes": classes,
        "norm": norm, "champion": champion, "paths": paths, "decisions": decisions, "run_id": run_id, "key": key,
        "dataset_version": pixels["version"],
        "config": {**cfg.model_dump(), "resolved_recipe": recipe.as_dict(), "code_version": code,
                   "input_shape": list(shape), "decisions": decisions.counts(), "decisions_digest": people.digest(),
                   "initialised_from": f"champion v{init_from['version']}" if init_from else "scratch"}}
    trainer = DataParallelTrainer(
        train_loop_per_worker,
        backend_config=TensorflowBackendConfig(),  # Ray Train's controller then never imports TensorFlow
        train_loop_config={"recipe": recipe.as_dict(), "shape": list(shape), "classes": classes,
                           "learning_rate": rate, "seed": cfg.seed, "mixed_precision": cfg.mixed_precision,
                           "norm": norm, "batch_size_per_worker": batch, "steps_per_epoch": steps_per_epoch,
                           "jit_compile": cfg.jit_compile, "cache_data": cfg.cache_data, "store_root": store.root,
                           "shards": paths, "shares": shares, "decisions": decisions,
                           "init_from": init_from and init_from["path"], "whitening": whitening,
                           "finish": (_finish, registration)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.resources_per_worker,
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(name=train_run_name(key, run_id, cfg.retrain), storage_path=checkpoints,
                             storage_filesystem=checkpoints_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_accuracy",
                                                                checkpoint_score_order="max"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )
    log.info("train: %s on %d worker(s), %d epochs max, batch %d per worker, learning rate %g",
             recipe.model, workers, recipe.epochs, batch, rate)
    trainer.fit()
    log.info("train: trained and registered in %.0f s (from the stage's start)", time.perf_counter() - started)
    return _registered(store, key, run_id)


def _registered(store: Store, key: str, run_id: str) -> dict | None:
    """The model this run registered for ``key``, or None."""
    model = store.find_model(key)
    return model if model is not None and model["run_id"] == run_id else None


def _finish(weights: list[np.ndarray], history: list[dict], *, store_args: tuple[str, str], recipe: dict,
            shape: tuple[int, int, int], classes: list[str], norm: dict | None, champion: dict | None,
            paths: list[str], decisions: Decisions, run_id: str, key: str, dataset_version: int,
            config: dict) -> None:
    """On the rank-0 training worker once the epochs are done: the best epoch's ``weights`` in a float32 model,
    scored against the champion on the holdout, published and registered as a challenger. A retried worker that
    had registered it already leaves it as it is."""
    store = Store(*store_args)
    if _registered(store, key, run_id) is not None:
        return
    recipe = Recipe(**recipe)
    model = _float32_copy(weights, recipe, shape, classes, norm)
    metrics = evaluate_against(store, model, champion, paths, classes, shape, decisions)
    with tempfile.TemporaryDirectory() as tmp:
        registry.register_model(store, registry.save_model_file(model, tmp), classes, run_id=run_id,
                                name=recipe.model, key=key, dataset_version=dataset_version,
                                metrics={**metrics, "history": history}, config=config)


def holdout_copies(store: Store, shards: list[str], shape: tuple[int, int, int], distance: float) -> frozenset[str]:
    """The holdout (val and test) images that are near-copies of a training image: the same perceptual hash
    (``imaging.quality.dhash``) and colour thumbnails at most ``distance`` apart. Two passes over the shards,
    one at a time: every image's hash, then the thumbnails of the images whose hash both sides share (only
    the shards that hold one are read again)."""
    hashes, in_train = [], []
    for shard in shards:
        rows = read_shard(store.root, shard, columns=["pixels", "split"])
        hashes.append(np.array([dhash(image) for image in pixels_to_array(rows.column("pixels"), shape)], np.int64))
        in_train.append(np.asarray(rows.column("split").to_pylist(), dtype=object) == "train")
    if not shards:
        return frozenset()
    every, train = np.concatenate(hashes), np.concatenate(in_train)
    shared = np.intersect1d(every[train], every[~train & (every != 0)])
    train_thumbs, held_thumbs = {}, {}
    for shard, shard_hashes, shard_train in zip(shards, hashes, in_train):
        wanted = np.flatnonzero(np.isin(shard_hashes, shared))
        if not len(wanted):
            continue
        rows = read_shard(store.root, shard, columns=["image_id", "pixels"])
        images, ids = pixels_to_array(rows.column("pixels"), shape), rows.column("image_id").to_pylist()
        for i in wanted:
            if shard_train[i]:
                train_thumbs.setdefault(shard_hashes[i], []).append(thumbnail(images[i]))
            else:
                held_thumbs[ids[i]] = (shard_hashes[i], thumbnail(images[i]))
    return frozenset(image_id for image_id, (value, thumb) in held_thumbs.items()
                     if thumbnail_distance(np.stack(train_thumbs[value]), thumb[None]).min() <= distance)


def _warm_start(init: str, champion: dict | None, model_name: str, classes: list[str],
                shape: tuple[int, int, int]) -> dict | None:
    """The champion to start from with ``train.init: champion`` when it has this run's architecture,
    classes and input shape; None (train from scratch) otherwise."""
    if init != "champion" or champion is None:
        return None
    problem = f"it is a {champion['name']}" if champion["name"] != model_name else load_scorer(
        champion, classes, shape)[1]
    if problem:
        log.info("train: starting from scratch, not from champion v%d: %s", champion["version"], problem)
        return None
    log.info("train: starting from champion v%d's weights", champion["version"])
    return champion


def _float32_copy(weights: list[np.ndarray], recipe: Recipe, shape: tuple[int, int, int], classes: list[str],
                  norm: dict | None):
    """A trained model's ``weights`` in a float32 model, so that it runs on any machine whatever policy trained
    it, with the recipe's test-time augmentation."""
    from fusion_core.learning.model import build_model, published_model

    model = build_model(recipe.model, shape, len(classes), norm=norm, recipe=recipe)
    model.set_weights(weights)
    return published_model(model, recipe)


def _same_decisions(model: dict, decisions: Decisions) -> bool:
    """Whether ``model`` was trained under the decisions now in force."""
    return model["config"].get("decisions_digest", Decisions().digest()) == decisions.digest()


def _result(model: dict, champion_version: int | None, trained: bool, promotion: str) -> StageResult:
    """The stage's result; its ``champion_version`` (what infer uses next) is ``model`` when it is champion,
    else the champion the run started with."""
    m = model["metrics"]
    champion = model["version"] if model["stage"] == "champion" else champion_version
    return StageResult(
        "train",
        counts={"trained": int(trained), "reused": int(not trained), "holdout_images": m["n"],
                **(model["config"].get("decisions") or {})},
        metrics={k: m[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "ece") if k in m},
        outputs={"model_version": model["version"], "model_path": model["path"], "stage": model["stage"],
                 "promotion": promotion, "champion_version": champion,
                 "comparison": comparison_rows(m)},
    )

