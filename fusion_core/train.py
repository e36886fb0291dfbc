"""Train: the ``pixels`` dataset -> a registered model version, evaluated on the holdout.

Follows Ray Train's example shape: ``train_loop_per_worker(config)`` runs on
every worker under ``MultiWorkerMirroredStrategy`` (when there are several); ``train_model`` is the
driver. Each worker reads its own shard of the Ray dataset; the driver never
loads the training data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time

import numpy as np

from fusion_core import registry, uri
from fusion_core.config import Settings
from fusion_core.datasets import shard_files
from fusion_core.derive import derivation_key, derive_model
from fusion_core.recipes import Recipe
from fusion_core.registry import MODEL_FILE
from fusion_core.runs import StageResult, code_version
from fusion_core.feed import epoch_steps, whitening_filters
from fusion_core.scoring import (class_names, comparison_rows, count_labelled, evaluate_against, labelled_rows,
                                 load_scorer, training_sample, xy_arrays)
from fusion_core.store import Store

log = logging.getLogger(__name__)

SHUFFLE_ROWS = 10_000  # rows in each worker's shuffle buffer
STATE_FILE = "state.json"  # {"history": [per-epoch metrics]}, beside each checkpoint's model


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build the model under the strategy, fit epoch by epoch, report checkpoints."""
    import ray.train
    import tensorflow as tf

    from fusion_core.airbench import set_whitening
    from fusion_core.model import build_model, load_model

    ctx = ray.train.get_context()
    # TensorFlow's op threads fill the node's cores, shared by the workers on it.
    tf.config.threading.set_intra_op_parallelism_threads(
        max(1, len(os.sched_getaffinity(0)) // ctx.get_local_world_size()))
    recipe = Recipe(**config["recipe"])
    policy = precision_policy(config["mixed_precision"])
    if policy != "float32":
        import tf_keras

        tf_keras.mixed_precision.set_global_policy(policy)
    tf.keras.utils.set_random_seed(config["seed"] + ctx.get_world_rank())
    # One worker needs no cross-worker strategy (which slows every step).
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if ctx.get_world_size() > 1 else tf.distribute.get_strategy()
    start_epoch, history = 0, []
    with strategy.scope():
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as path:
                model = load_model(os.path.join(path, MODEL_FILE))
                with open(os.path.join(path, STATE_FILE)) as fh:
                    history = json.load(fh)["history"]
                start_epoch = history[-1]["epoch"] + 1
        else:
            model = build_model(recipe.model, tuple(config["shape"]), len(config["classes"]),
                                config["learning_rate"], norm=config["norm"], recipe=recipe,
                                steps_per_epoch=config["steps_per_epoch"])
            if config["init_from"]:  # warm start: the champion's weights, a fresh optimizer and schedule
                with tempfile.TemporaryDirectory() as tmp:
                    model.set_weights(load_model(uri.local_file(config["init_from"], tmp), compile=False).get_weights())
            elif config["whitening"] is not None:
                set_whitening(model, np.asarray(config["whitening"], np.float32))
    model.jit_compile = config["jit_compile"]
    callbacks = recipe_callbacks(recipe, config["steps_per_epoch"])
    train_data, val_data = _feeds(config, recipe)
    for epoch in range(start_epoch, recipe.epochs):
        if should_stop_early(history, recipe.early_stopping_patience):
            break
        started = time.perf_counter()
        fit = model.fit(train_data(epoch), epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=callbacks)
        val_loss, val_acc = model.evaluate(val_data(), verbose=0)
        metrics = {"epoch": epoch, "loss": float(fit.history["loss"][-1]),
                   "accuracy": float(fit.history["accuracy"][-1]),
                   "val_loss": float(val_loss), "val_accuracy": float(val_acc),
                   "seconds": time.perf_counter() - started, "policy": policy,
                   "resumed_at": start_epoch}  # > 0 when this attempt resumed from a checkpoint
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            # Every rank saves (the strategy may need all of them); keras_v3 because Ray Train runs this
            # function in a thread where tf-keras would otherwise fall back to HDF5.
            model.save(os.path.join(tmp, MODEL_FILE), save_format="keras_v3")
            with open(os.path.join(tmp, STATE_FILE), "w") as fh:
                json.dump({"history": history}, fh)
            report_checkpoint = ray.train.Checkpoint.from_directory(tmp) if ctx.get_world_rank() == 0 else None
            ray.train.report(metrics, checkpoint=report_checkpoint)


def recipe_callbacks(recipe: Recipe, steps_per_epoch: int) -> list:
    """The Keras callbacks a recipe trains with: airbench's whitening-bias freeze and lookahead, from
    epoch 3 of its 9.9 (30% of the epochs here)."""
    from fusion_core.airbench import FreezeWhiteningBias, Lookahead

    if recipe.model != "airbench":
        return []
    late = max(1, round(0.3 * recipe.epochs))
    return [FreezeWhiteningBias(late)] + ([Lookahead(recipe.epochs * steps_per_epoch, late)] if recipe.ema else [])


def _feeds(config: dict, recipe: Recipe):
    """Per-epoch input pipelines over this worker's shards: ``train(epoch)`` and ``val()``.

    With ``cache_data`` the worker reads its shards once into memory as uint8 arrays; each epoch then
    draws a fresh random order (and the recipe's flips and shifts) from them. Without, every epoch
    streams the shards from Ray Data through a local shuffle buffer. Shards follow the source's order
    (often class by class), so both shuffle within the worker every epoch.
    """
    import ray.train

    from fusion_core import feed

    batch, seed, shape = config["batch_size_per_worker"], config["seed"], tuple(config["shape"])
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    val_x, val_y = _in_memory(val_shard, shape)
    val = lambda: batch_dataset(lambda: feed.epoch_batches(val_x, val_y, 512, shuffle=False), shape)  # noqa: E731
    if config["cache_data"]:
        x, y = _in_memory(train_shard, shape)
        return (lambda epoch: batch_dataset(lambda: feed.epoch_batches(
            x, y, batch, seed=seed, epoch=epoch, flip=recipe.flip, pad=recipe.translate), shape)), val

    def streamed(epoch: int):
        rng = np.random.default_rng([seed, epoch])
        flip = "random" if recipe.flip != "none" else "none"  # no per-image memory across epochs here
        for rows in train_shard.iter_batches(batch_size=batch, batch_format="pyarrow", drop_last=True,
                                             local_shuffle_buffer_size=SHUFFLE_ROWS, local_shuffle_seed=seed + epoch):
            rows = xy_arrays(rows, shape)
            mirrored = feed.flip_mask(len(rows["y"]), flip, int(rng.integers(1 << 31)), epoch)
            yield feed.augment(rows["x"], mirrored, recipe.translate, rng), rows["y"]

    return (lambda epoch: batch_dataset(lambda: streamed(epoch), shape)), val


def _in_memory(shard, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A worker's whole dataset shard as (uint8 images, labels)."""
    xs, ys = [np.empty((0, *shape), np.uint8)], [np.empty(0, np.int64)]
    for rows in shard.iter_batches(batch_size=4096, batch_format="pyarrow"):
        rows = xy_arrays(rows, shape)
        xs.append(rows["x"])
        ys.append(rows["y"])
    return np.concatenate(xs), np.concatenate(ys)


def batch_dataset(batches, shape: tuple[int, int, int]):
    """A tf.data pipeline over ``batches()``, a generator of (uint8 images, labels), prefetching; under a
    multi-worker strategy each worker feeds its own data. Batches cross from Python in groups
    (``feed.grouped``), so small batches do not pay Python's cost per step."""
    import tensorflow as tf

    from fusion_core.feed import grouped

    data = tf.data.Dataset.from_generator(lambda: grouped(batches()), output_signature=(
        tf.TensorSpec((None, None, *shape), tf.uint8), tf.TensorSpec((None, None), tf.int64)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return data.unbatch().with_options(options).prefetch(2)


def precision_policy(mixed: bool) -> str:
    """The Keras dtype policy for this machine: float16 compute on GPUs, bfloat16 on CPUs with bf16
    instructions (AVX512-BF16 or AMX), else float32."""
    if not mixed:
        return "float32"
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if " avx512_bf16" in flags or " amx_bf16" in flags else "float32"


def train_run_name(key: str, run_id: str, retrain: str) -> str:
    """Ray Train's run name: per data and settings, so a stopped run is resumed by the next one with the
    same inputs (Ray Train restores a run of the same name from its latest checkpoint); per run when
    retraining is forced."""
    if retrain == "always":
        return f"train-{run_id}"
    return f"train-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def should_stop_early(history: list[dict], patience: int | None) -> bool:
    """True when validation accuracy has not improved for ``patience`` epochs (same on every rank)."""
    if not patience or len(history) <= patience:
        return False
    best = max(range(len(history)), key=lambda i: history[i]["val_accuracy"])
    return len(history) - 1 - best >= patience


def train_model(settings: Settings, store: Store, pixels_version: int, run_id: str,
                drift_flags: list[str] | None = None) -> StageResult:
    """Train on ``pixels`` version ``pixels_version``, evaluate on its test split, register and maybe promote.

    Args:
        drift_flags: the drift checks this run flagged (None: not checked). With ``train.retrain:
            on_drift`` a run that checked and flagged none keeps the champion without training; with
            ``drift.action: block_promotion`` a flagged run does not promote.

    Skips training when a model already exists for the same data and training config (unless
    ``train.retrain`` is ``always``).
    """
    cfg = settings.train
    pixels = store.require_version("pixels", pixels_version)
    champion = store.champion()
    if cfg.retrain == "on_drift" and drift_flags == [] and champion is not None:
        log.info("train: no drift flagged: champion v%d kept, not retrained", champion["version"])
        return _result(store, champion, trained=False, promotion="no drift flagged: champion kept, not retrained")
    blocked = (f"drift flagged ({', '.join(drift_flags)}) blocks promotion"
               if drift_flags and settings.drift.action == "block_promotion" else None)
    key = derivation_key("pixels", pixels["version"], settings.section_hash("train"))
    promotion = []

    def build() -> dict:
        from fusion_core.ray_runtime import ensure_ray

        # The trainer's driver side runs in a Ray task that takes no CPU (the workers need them), so that
        # this process never imports TensorFlow.
        ray = ensure_ray(settings)
        fit = ray.remote(_fit_and_register_in_task).options(num_cpus=0)
        # The code version is the driver's: the task may run on a node that got Fusion through runtime_env.
        model = ray.get(fit.remote(settings, store.reopen_args(), pixels, key, run_id, code_version()))
        promotion.append(registry.promote_if_better(store, model["version"], cfg.promote_margin, cfg.promote_alpha,
                                                    blocked))
        log.info("train: model v%d %s", model["version"], promotion[0])
        return model

    model, reused = derive_model(store, key, build, reuse=cfg.retrain != "always")
    return _result(store, store.get_model(model["version"]), trained=not reused,
                   promotion=promotion[0] if promotion else "reused: trained earlier on the same data and settings")


def _fit_and_register_in_task(settings: Settings, store_args: tuple[str, str], pixels: dict, key: str,
                              run_id: str, code: str) -> dict:
    return _fit_and_register(settings, Store(*store_args), pixels, key, run_id, code)


def _fit_and_register(settings: Settings, store: Store, pixels: dict, key: str, run_id: str, code: str) -> dict:
    """Fit with Ray Train, publish the best checkpoint in float32, evaluate it and register it."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from fusion_core.ray_runtime import ensure_ray, remove_leftover_placement_groups
    from fusion_core.tf_backend import TensorflowBackendConfig

    cfg = settings.train
    ray = ensure_ray(settings)
    remove_leftover_placement_groups()
    paths = [s["path"] for s in pixels["shards"]]
    classes = class_names(store, paths)
    shape = tuple(pixels["info"]["shape"])
    norm = pixels["info"]["stats"] if pixels["info"].get("scale") == "standardize" else None
    started = time.perf_counter()
    fs, files = shard_files(store.root, paths)
    source = ray.data.read_parquet(files, filesystem=fs, columns=["pixels", "label", "split"])
    # No global shuffle: blocks in a random order, and each worker shuffles its share every epoch.
    datasets = {split: source.map_batches(labelled_rows, batch_format="pyarrow", batch_size=4096,
                                          fn_kwargs={"classes": classes, "split": split})
                for split in ("train", "val")}
    datasets["train"] = datasets["train"].randomize_block_order(seed=cfg.seed)
    if not spare_cpus(ray, cfg):  # Ray Data's tasks need a CPU the workers do not hold; else they read as
        datasets = {split: data.materialize() for split, data in datasets.items()}  # the workers start
    recipe = cfg.resolved_recipe()
    champion = store.champion()
    init_from = _warm_start(cfg.init, champion, recipe.model, classes, shape)
    workers = cfg.num_workers
    # Linear scaling: N workers train with N x the batch at N x the rate, or split one global batch.
    batch = recipe.batch_size if recipe.scale_with_workers else max(1, recipe.batch_size // workers)
    rate = recipe.learning_rate * (workers if recipe.scale_with_workers else 1)
    # Ray Train gives every worker the same number of rows.
    steps_per_epoch = epoch_steps(count_labelled(store, paths, "train") // workers, batch)
    whitening = None
    if recipe.model == "airbench" and recipe.whitening and not init_from:
        whitening = whitening_filters(training_sample(store, paths, classes, shape), norm).tolist()
    checkpoints_fs, checkpoints = uri.filesystem(store.path("checkpoints"))  # the store's endpoint, on every worker
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        tensorflow_config=TensorflowBackendConfig(),  # Ray Train's controller then never imports TensorFlow
        train_loop_config={"recipe": recipe.as_dict(), "shape": list(shape), "classes": classes,
                           "learning_rate": rate, "seed": cfg.seed, "mixed_precision": cfg.mixed_precision,
                           "norm": norm, "batch_size_per_worker": batch, "steps_per_epoch": steps_per_epoch,
                           "jit_compile": cfg.jit_compile, "cache_data": cfg.cache_data,
                           "init_from": init_from and init_from["path"], "whitening": whitening},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.resources_per_worker,
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(name=train_run_name(key, run_id, cfg.retrain), storage_path=checkpoints,
                             storage_filesystem=checkpoints_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_accuracy",
                                                                checkpoint_score_order="max"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
        datasets=datasets,
    )
    log.info("train: %s on %d worker(s), %d epochs max, batch %d per worker, learning rate %g",
             recipe.model, workers, recipe.epochs, batch, rate)
    result = trainer.fit()
    log.info("train: trained in %.0f s (from the stage's start)", time.perf_counter() - started)
    with result.checkpoint.as_directory() as last:
        with open(os.path.join(last, STATE_FILE)) as fh:
            history = json.load(fh)["history"]
    best = result.get_best_checkpoint(metric="val_accuracy", mode="max") or result.checkpoint
    with best.as_directory() as ckpt, tempfile.TemporaryDirectory() as tmp:
        model = _float32_copy(os.path.join(ckpt, MODEL_FILE), recipe, shape, classes, norm)
        metrics = evaluate_against(store, model, champion, paths, classes, shape)
        model_file = registry.save_model_file(model, tmp)
        return registry.register_model(
            store, model_file, classes, run_id=run_id, name=recipe.model, key=key, dataset_version=pixels["version"],
            metrics={**metrics, "history": history},
            config={**cfg.model_dump(), "resolved_recipe": recipe.as_dict(), "code_version": code,
                    "input_shape": list(shape),
                    "initialised_from": f"champion v{init_from['version']}" if init_from else "scratch"})


def spare_cpus(ray, cfg) -> bool:
    """Whether the cluster has a CPU left over when the training workers hold theirs."""
    per_worker = (cfg.resources_per_worker or {}).get("CPU", 1)
    return ray.cluster_resources().get("CPU", 0) - cfg.num_workers * per_worker >= 1


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


def _float32_copy(path: str, recipe: Recipe, shape: tuple[int, int, int], classes: list[str], norm: dict | None):
    """The checkpoint's model rebuilt in float32, so that it runs on any machine whatever policy trained it,
    with the recipe's test-time augmentation."""
    from fusion_core.model import build_model, load_model, published_model

    model = build_model(recipe.model, shape, len(classes), norm=norm, recipe=recipe)
    model.set_weights(load_model(path, compile=False).get_weights())
    return published_model(model, recipe)


def _result(store: Store, model: dict, trained: bool, promotion: str) -> StageResult:
    m = model["metrics"]
    champ = store.champion()
    return StageResult(
        "train",
        counts={"trained": int(trained), "reused": int(not trained), "holdout_images": m["n"]},
        metrics={k: m[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "ece") if k in m},
        outputs={"model_version": model["version"], "model_path": model["path"], "stage": model["stage"],
                 "promotion": promotion, "champion_version": champ["version"] if champ else None,
                 "comparison": comparison_rows(m)},
    )

