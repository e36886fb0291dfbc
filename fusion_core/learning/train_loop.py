"""What runs inside each Ray Train worker: build or restore the model under the strategy, feed it this worker's
share of the rows epoch by epoch, report a checkpoint (model and history) after every epoch, and on rank 0 hand
the best epoch's weights to ``config["finish"]`` (evaluation and registration: TensorFlow is loaded here
already). ``fusion_core.stages.train`` is the driver side."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time

import numpy as np

from fusion_core import uri
from fusion_core.learning.registry import MODEL_FILE
from fusion_core.learning.scoring import labelled_share, xy_arrays
from fusion_core.recipes import Recipe

STATE_FILE = "state.json"  # {"history": [per-epoch metrics]}, beside each checkpoint's model
BEST_FILE = "best.npz"  # the best epoch's weights, in a checkpoint whose own epoch is not the best


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build the model under the strategy, fit epoch by epoch, report checkpoints."""
    import ray.train
    import tensorflow as tf

    from fusion_core.learning.airbench import set_whitening
    from fusion_core.learning.model import build_model, load_model

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
    start_epoch, history, best_weights = 0, [], None
    with strategy.scope():
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as path:
                model = load_model(os.path.join(path, MODEL_FILE))
                with open(os.path.join(path, STATE_FILE)) as fh:
                    history = json.load(fh)["history"]
                start_epoch = history[-1]["epoch"] + 1
                best_weights = (model.get_weights() if best_index(history) == len(history) - 1
                                else list(np.load(os.path.join(path, BEST_FILE)).values()))
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
    train_data, val_data = _feeds(config, recipe, ctx.get_world_rank())
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
        is_best = best_index(history) == len(history) - 1
        if is_best:
            best_weights = model.get_weights()
        with tempfile.TemporaryDirectory() as tmp:
            # Every rank saves (the strategy may need all of them); keras_v3 because Ray Train runs this
            # function in a thread where tf-keras would otherwise fall back to HDF5.
            model.save(os.path.join(tmp, MODEL_FILE), save_format="keras_v3")
            with open(os.path.join(tmp, STATE_FILE), "w") as fh:
                json.dump({"history": history}, fh)
            if not is_best:
                np.savez(os.path.join(tmp, BEST_FILE), *best_weights)
            report_checkpoint = ray.train.Checkpoint.from_directory(tmp) if ctx.get_world_rank() == 0 else None
            ray.train.report(metrics, checkpoint=report_checkpoint)
    if ctx.get_world_rank() == 0 and config.get("finish"):
        finish, arguments = config["finish"]
        if policy != "float32":
            tf_keras.mixed_precision.set_global_policy("float32")  # the published model runs anywhere
        finish(best_weights, history, **arguments)


def recipe_callbacks(recipe: Recipe, steps_per_epoch: int) -> list:
    """The Keras callbacks a recipe trains with: airbench's whitening-bias freeze and lookahead, from
    epoch 3 of its 9.9 (30% of the epochs here)."""
    from fusion_core.learning.airbench import FreezeWhiteningBias, Lookahead

    if recipe.model != "airbench":
        return []
    late = max(1, round(0.3 * recipe.epochs))
    return [FreezeWhiteningBias(late)] + ([Lookahead(recipe.epochs * steps_per_epoch, late)] if recipe.ema else [])


def _feeds(config: dict, recipe: Recipe, rank: int):
    """Per-epoch input pipelines over this worker's share of the rows: ``train(epoch)`` and ``val()``.

    The worker reads its share (``config["shares"][split][rank]``, pieces of the pixels shards) from the
    store itself. With ``cache_data`` it reads the share once into memory as uint8 arrays; each epoch then
    draws a fresh random order (and the recipe's flips and shifts) from them. Without, every epoch reads the
    pieces again, in a fresh random order, each shuffled, rows carried over so that every batch is full.
    """
    from fusion_core.learning import feed

    batch, seed, shape = config["batch_size_per_worker"], config["seed"], tuple(config["shape"])

    def pieces(split: str, order=None):
        share = config["shares"][split][rank]
        share = [share[i] for i in order] if order is not None else share
        for rows in labelled_share(config["store_root"], config["shards"], share, config["classes"], split,
                                   config["decisions"]):
            yield xy_arrays(rows, shape)

    val_x, val_y = _in_memory(pieces("val"), shape)
    val = lambda: batch_dataset(lambda: feed.epoch_batches(val_x, val_y, 512, shuffle=False), shape)  # noqa: E731
    if config["cache_data"]:
        x, y = _in_memory(pieces("train"), shape)
        return (lambda epoch: batch_dataset(lambda: feed.epoch_batches(
            x, y, batch, seed=seed, epoch=epoch, flip=recipe.flip, pad=recipe.translate), shape)), val

    def streamed(epoch: int):
        rng = np.random.default_rng([seed, epoch])
        flip = "random" if recipe.flip != "none" else "none"  # no per-image memory across epochs here
        carry_x, carry_y = np.empty((0, *shape), np.uint8), np.empty(0, np.int64)
        for rows in pieces("train", rng.permutation(len(config["shares"]["train"][rank]))):
            order = rng.permutation(len(rows["y"]))
            carry_x, carry_y = np.concatenate([carry_x, rows["x"][order]]), np.concatenate([carry_y, rows["y"][order]])
            full = len(carry_y) - len(carry_y) % batch
            for start in range(0, full, batch):
                mirrored = feed.flip_mask(batch, flip, int(rng.integers(1 << 31)), epoch)
                yield feed.augment(carry_x[start:start + batch], mirrored, recipe.translate, rng), \
                    carry_y[start:start + batch]
            carry_x, carry_y = carry_x[full:], carry_y[full:]

    return (lambda epoch: batch_dataset(lambda: streamed(epoch), shape)), val


def _in_memory(pieces, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A worker's pieces (``xy_arrays``) as one pair of arrays: (uint8 images, labels)."""
    xs, ys = [np.empty((0, *shape), np.uint8)], [np.empty(0, np.int64)]
    for rows in pieces:
        xs.append(rows["x"])
        ys.append(rows["y"])
    return np.concatenate(xs), np.concatenate(ys)


def batch_dataset(batches, shape: tuple[int, int, int]):
    """A tf.data pipeline over ``batches()``, a generator of (uint8 images, labels), prefetching; under a
    multi-worker strategy each worker feeds its own data. Batches cross from Python in groups
    (``feed.grouped``), so small batches do not pay Python's cost per step."""
    import tensorflow as tf

    from fusion_core.learning.feed import grouped

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



def best_index(history: list[dict]) -> int:
    """The index of the epoch with the highest validation accuracy (the first of equals)."""
    return max(range(len(history)), key=lambda i: history[i]["val_accuracy"])


def should_stop_early(history: list[dict], patience: int | None) -> bool:
    """True when validation accuracy has not improved for ``patience`` epochs (same on every rank)."""
    if not patience or len(history) <= patience:
        return False
    return len(history) - 1 - best_index(history) >= patience


def train_run_name(key: str, run_id: str, retrain: str) -> str:
    """Ray Train's run name: per data and settings, so a stopped run is resumed by the next one with the
    same inputs (Ray Train restores a run of the same name from its latest checkpoint); per run when
    retraining is forced."""
    if retrain == "always":
        return f"train-{run_id}"
    return f"train-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
