"""Training on CIFAR-10: the best recipe (airbench94) over 3 seeds, Fusion's train stage vs a plain
``model.fit`` at 50k and 400k images, and the ablation of airbench's tricks.

CIFAR-10's own split (``train/`` 50k, ``test/`` 10k JPEGs) is ingested and preprocessed through Fusion
(2% of train held out for per-epoch validation, 49k left to train on). Then, in one run on this machine:

- best: the ``best`` recipe through Fusion's train stage (1 Ray Train worker) once per seed (``--seeds``):
  test accuracy with test-time augmentation, training seconds, and the training seconds until the
  per-epoch validation accuracy (no augmentation) first reaches 90%, 93% and 94%;
- plain / ray1: the seed recipe (seed CNN, Adam, batch 64, 10 epochs) as one in-process ``model.fit``
  over the same rows in memory, validating every epoch, vs Fusion's train stage with 1 worker, timed end
  to end (Ray datasets, worker start, training, checkpoints, holdout evaluation, registration);
- plain400k / ray400k: the same pair on 400,000 generated images (parts 0-7 of ``bench/scale.py``'s
  1M collection, ``--big-epochs`` epochs each); ray2 (not by default): the seed recipe on 2 workers;
- ablation: airbench's recipe in-process with one trick at a time turned off (``--ablation-epochs``
  each, 1 seed); the test-time augmentation levels are scored on the full recipe's model.

Both sides use the same dtype policy (bfloat16 compute on CPUs with bf16 instructions; see
``fusion_core.learning.train_loop.precision_policy``).

    python bench/train.py [--parts best,plain,ray1,plain400k,ray400k,ablation] [--seeds 0,1,2]

Writes bench/results/train.json (the parts measured in this run only, rewritten as each part ends) and prints
a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cifar import cifar_folder  # noqa: E402
from record import run_context, write_results  # noqa: E402

PARTS = ("best", "plain", "ray1", "ray2", "plain400k", "ray400k", "ablation")
TARGETS = (0.90, 0.93, 0.94)
# Leave-one-out variants of the best recipe: (row label, recipe fields changed).
ABLATION = (
    ("full recipe", {}),
    ("no patch whitening (a learned 2x2 conv)", {"whitening": False}),
    ("no identity init of convs", {"dirac": False}),
    ("Keras batch norm (scale, momentum 0.99, eps 1e-3)", {"airbench_bn": False}),
    ("batch-norm biases at 1x the rate (not 64x)", {"bias_lr_scale": 1.0}),
    ("no label smoothing (0.2)", {"label_smoothing": 0.0}),
    ("random flips (not alternating)", {"flip": "random"}),
    ("no 2-pixel translation", {"translate": 0}),
    ("no lookahead (EMA)", {"ema": False}),
)

TTA_NAMES = {0: "none (not 6)", 1: "image + mirror (not 6)", 2: "6"}


def arrays(store, pixels: dict) -> tuple[dict, dict, dict, list, tuple, dict | None]:
    """train, val, test {"x", "y"} of a pixels dataset in memory, its classes, shape and norm."""
    from fusion_core.learning.scoring import class_names, to_xy
    from fusion_core.store.datasets import read_shards

    paths = [s["path"] for s in pixels["shards"]]
    shape, classes = tuple(pixels["info"]["shape"]), class_names(store, paths)
    norm = pixels["info"]["stats"] if pixels["info"].get("scale") == "standardize" else None
    table = read_shards(store.root, paths, columns=["pixels", "label", "split"])
    train, val, test = (to_xy(table, classes, shape, split) for split in ("train", "val", "test"))
    return train, val, test, classes, shape, norm


def plain_fit(store, pixels: dict, epochs: int, batch_size: int, policy: str, suffix: str = "") -> dict:
    """The seed recipe as one in-process ``model.fit`` on the pixels dataset's rows; timed fit + test."""
    import tf_keras

    from fusion_core.learning.model import build_model

    train, val, test, classes, shape, _ = arrays(store, pixels)
    tf_keras.utils.set_random_seed(0)
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        started = time.perf_counter()
        model = build_model("seed_cnn", shape, len(classes))
        model.fit(train["x"], train["y"], batch_size=batch_size, epochs=epochs, shuffle=True,
                  validation_data=(val["x"], val["y"]), verbose=2)
        _, accuracy = model.evaluate(test["x"], test["y"], batch_size=512, verbose=0)
        seconds = time.perf_counter() - started
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    return {f"plain_s{suffix}": round(seconds, 1), f"plain_acc{suffix}": round(float(accuracy), 4),
            f"train_images{suffix}": len(train["y"]), f"val_images{suffix}": len(val["y"]),
            f"test_images{suffix}": len(test["y"])}


def fusion_train(settings, store, pixels_version: int, overrides: dict, run_id: str) -> tuple[dict, float]:
    """Fusion's train stage on ``pixels_version`` with ``overrides`` on top of ``settings``; returns the
    registered model and seconds."""
    from fusion_core.stages.train import train_model

    settings = settings.model_copy(update={"train": settings.train.model_copy(update=overrides)})
    started = time.perf_counter()
    result = train_model(settings, store, pixels_version, run_id, store.champion_version())
    seconds = time.perf_counter() - started
    return store.get_model(result.outputs["model_version"]), seconds


def curve(model: dict) -> list[list[float]]:
    """[[cumulative training seconds, validation accuracy], ...] per epoch."""
    points, total = [], 0.0
    for epoch in model["metrics"]["history"]:
        total += epoch["seconds"]
        points.append([round(total, 1), round(epoch["val_accuracy"], 4)])
    return points


def time_to(points: list[list[float]], target: float) -> float | None:
    """Training seconds until the validation accuracy first reaches ``target`` (None: never)."""
    return next((s for s, acc in points if acc >= target), None)


def best_seeds(settings, store, pixels_version: int, seeds: list[int]) -> dict:
    """The best recipe once per seed through Fusion; the mean and spread of its figures."""
    runs = []
    for seed in seeds:
        model, seconds = fusion_train(settings, store, pixels_version,
                                      {"recipe": "best", "num_workers": 1, "seed": seed}, f"bench-best-{seed}")
        points = curve(model)
        runs.append({"seed": seed, "acc": round(model["metrics"]["accuracy"], 4), "s": round(seconds, 1),
                     "train_s": points[-1][0], "curve": points,
                     **{f"t{round(t * 100)}_s": time_to(points, t) for t in TARGETS}})
        print(f"seed {seed}: test accuracy {runs[-1]['acc']:.4f}, {seconds:.0f} s", flush=True)
        if seed == seeds[0]:
            shutil.copy(model["path"], HERE / "results" / "best_model.keras")
            name, ece = model["name"], model["metrics"]["ece"]
    accs = [r["acc"] for r in runs]
    row = {"best_acc": round(statistics.mean(accs), 4), "best_acc_seeds": accs,
           "best_acc_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
           "best_s": round(statistics.mean(r["s"] for r in runs), 1),
           "best_train_s": round(statistics.mean(r["train_s"] for r in runs), 1),
           "best_model": name, "best_ece": round(ece, 4), "best_runs": runs}
    for target in TARGETS:
        key = f"t{round(target * 100)}_s"
        times = [r[key] for r in runs]
        row[key] = round(statistics.mean(times), 1) if None not in times else None
    return row


def ablation(store, pixels: dict, epochs: int, policy: str) -> list[dict]:
    """The best recipe trained in-process, once per variant of ``ABLATION``; test accuracy per variant,
    plus the full recipe's model scored with each level of test-time augmentation."""
    import numpy as np
    import tf_keras

    from fusion_core.learning.airbench import set_whitening
    from fusion_core.learning.feed import epoch_batches, epoch_steps, whitening_filters
    from fusion_core.learning.model import build_model, published_model
    from fusion_core.learning.train_loop import batch_dataset, recipe_callbacks
    from fusion_core.recipes import RECIPES

    train, _, test, classes, shape, norm = arrays(store, pixels)
    tf_keras.mixed_precision.set_global_policy(policy)
    rows = []
    try:
        for label, change in ABLATION:
            recipe = replace(RECIPES["best"], epochs=epochs, **change)
            tf_keras.utils.set_random_seed(0)
            steps = epoch_steps(len(train["y"]), recipe.batch_size)
            model = build_model("airbench", shape, len(classes), recipe.learning_rate, norm, recipe, steps)
            if recipe.whitening:
                set_whitening(model, whitening_filters(train["x"][np.random.default_rng(0).permutation(
                    len(train["y"]))[:5000]], norm))
            callbacks = recipe_callbacks(recipe, steps)
            started = time.perf_counter()
            for epoch in range(epochs):
                model.fit(batch_dataset(lambda: epoch_batches(train["x"], train["y"], recipe.batch_size, epoch=epoch,
                                                              flip=recipe.flip, pad=recipe.translate), shape),
                          epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=callbacks)
            seconds = time.perf_counter() - started
            for level in (recipe.tta,) if change else (2, 1, 0):
                probs = published_model(model, replace(recipe, tta=level)).predict(test["x"], batch_size=1000,
                                                                                   verbose=0)
                acc = float((probs.argmax(1) == test["y"]).mean())
                name = label if level == recipe.tta else f"{label}: test-time views {TTA_NAMES[level]}"
                rows.append({"variant": name, "test_acc": round(acc, 4), "train_s": round(seconds, 1),
                             "epochs": epochs})
                print(f"{rows[-1]['variant']:<60}{acc:>8.4f}{seconds:>8.0f} s", flush=True)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    return rows


def big_collection(data: Path, parts: int = 8) -> Path:
    """bench/scale.py's 1M generated collection cut to its first ``parts`` parts (hard links)."""
    full, cut = data / "1000000", data / f"{parts * 50_000}"
    if not full.exists():
        raise SystemExit(f"{full} does not exist: run `python bench/scale.py --sizes 1000000` first")
    if not cut.exists():
        tmp = cut.with_name(cut.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for label in sorted(p.name for p in full.iterdir() if p.is_dir()):
            (tmp / label).mkdir(parents=True)
            for f in (full / label).iterdir():
                if int(f.name.split("-", 1)[0]) < parts:
                    os.link(f, tmp / label / f.name)
        tmp.rename(cut)
    return cut


def prepared(settings, store, source: Path, run: str) -> int:
    """Ingest and preprocess ``source`` into ``store``; the pixels version."""
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.stages.preprocess import preprocess_dataset

    started = time.perf_counter()
    images_version = ingest_source(settings, store, str(source), f"{run}-ingest").outputs["version"]
    pixels_version = preprocess_dataset(settings, store, images_version, f"{run}-preprocess").outputs["version"]
    print(f"ingest + preprocess of {source}: {time.perf_counter() - started:.0f} s", flush=True)
    return pixels_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "cifar10",
                        help="holds train/<class>/*.jpg and test/...")
    parser.add_argument("--parts", default="best,plain,ray1,plain400k,ray400k,ablation",
                        help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="the best recipe's seeds")
    parser.add_argument("--scale-data", type=Path, default=HERE / "data" / "scale", help="bench/scale.py's --data")
    parser.add_argument("--big-epochs", type=int, default=2, help="seed-recipe epochs on 400k images")
    parser.add_argument("--ablation-epochs", type=int, default=3, help="epochs per ablation variant")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)} (allowed: {', '.join(PARTS)})")
    context = run_context()
    os.environ.setdefault("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")

    from fusion_core.config import load_settings
    from fusion_core.learning.train_loop import precision_policy
    from fusion_core.recipes import RECIPES
    from fusion_core.store import Store

    for split in ("train", "test"):
        cifar_folder(args.data / split, split)
    workdir = Path(tempfile.mkdtemp(prefix="fusion-bench-train-"))
    settings = load_settings(None, {"store.root": str(workdir / "store"), "train.retrain": "always",
                                    "ingest.val_fraction": 0.02})
    store = Store.from_settings(settings)
    policy = precision_policy(settings.train.mixed_precision)
    seed = RECIPES["seed"]
    pixels_version = big_version = None

    row = {"policy": policy}
    for part in parts:
        print(f"--- {part}", flush=True)
        if part.endswith("400k"):
            if big_version is None:
                big_settings = load_settings(None, {"store.root": str(workdir / "big"), "train.retrain": "always",
                                                    "ingest.val_fraction": 0.02})
                big_store = Store.from_settings(big_settings)
                big_version = prepared(big_settings, big_store, big_collection(args.scale_data), "bench-big")
            if part == "plain400k":
                row.update(plain_fit(big_store, big_store.require_version("pixels", big_version), args.big_epochs,
                                     seed.batch_size, policy, suffix="_400k"))
            else:
                _, seconds = fusion_train(big_settings, big_store, big_version,
                                          {"recipe": "seed", "num_workers": 1, "epochs": args.big_epochs},
                                          "bench-ray-400k")
                row["ray1_s_400k"] = round(seconds, 1)
            row["big_epochs"] = args.big_epochs
        else:
            if pixels_version is None:
                pixels_version = prepared(settings, store, args.data, "bench")
                pixels = store.require_version("pixels", pixels_version)
            if part == "plain":
                row.update(plain_fit(store, pixels, seed.epochs, seed.batch_size, policy))
            elif part in ("ray1", "ray2"):
                model, seconds = fusion_train(settings, store, pixels_version,
                                              {"recipe": "seed", "num_workers": int(part[-1])}, f"bench-{part}")
                row.update({f"{part}_s": round(seconds, 1), f"{part}_acc": round(model["metrics"]["accuracy"], 4),
                            f"{part}_epochs_s": curve(model)[-1][0]})  # fit and validation inside the worker
                if part == "ray1":
                    row.update({"seed_acc": row["ray1_acc"], "seed_s": row["ray1_s"]})
            elif part == "best":
                row.update(best_seeds(settings, store, pixels_version, [int(s) for s in args.seeds.split(",")]))
            else:
                row["ablation"] = ablation(store, pixels, args.ablation_epochs, policy)
        if "ray1_s" in row and "plain_s" in row:
            row["overhead"] = round(row["ray1_s"] / row["plain_s"], 3)
        if "ray1_s_400k" in row and "plain_s_400k" in row:
            row["overhead_400k"] = round(row["ray1_s_400k"] / row["plain_s_400k"], 3)
        write_results("train", row, context)  # after every part, so a run cut short keeps what it measured
    report(row)
    shutil.rmtree(workdir, ignore_errors=True)


def report(row: dict) -> None:
    """Print the measured figures and each goal, met or not."""
    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    print(f"\ndtype policy: {row['policy']}")
    print(f"{'':<48}{'seconds':>9}{'test acc':>10}")
    for label, s, acc in (("seed recipe, plain model.fit (1 process)", "plain_s", "plain_acc"),
                          ("seed recipe, Fusion, 1 Ray Train worker", "ray1_s", "ray1_acc"),
                          ("seed recipe, Fusion, 2 Ray Train workers", "ray2_s", "ray2_acc"),
                          ("seed recipe at 400k, plain model.fit", "plain_s_400k", "plain_acc_400k")):
        if s in row:
            print(f"{label:<48}{row[s]:>9.1f}{row.get(acc, float('nan')):>10.4f}")
    if "ray1_s_400k" in row:
        print(f"{'seed recipe at 400k, Fusion, 1 worker':<48}{row['ray1_s_400k']:>9.1f}")
    if "overhead" in row:
        print(f"Fusion / plain at 50k: {row['overhead']:.2f}x (goal <= 1.15x: {met(row['overhead'] <= 1.15)})")
    if "overhead_400k" in row:
        print(f"Fusion / plain at 400k: {row['overhead_400k']:.2f}x (goal <= 1.3x: {met(row['overhead_400k'] <= 1.3)})")
    if "best_acc" in row and "best_runs" in row:
        print(f"\nbest recipe ({row['best_model']}), seeds {[r['seed'] for r in row['best_runs']]}: test accuracy "
              f"{row['best_acc']:.4f} (per seed {row['best_acc_seeds']}, std {row['best_acc_std']:.4f}) after "
              f"{row['best_train_s']:.0f} s of training (goal >= 0.94 in <= 1800 s: "
              f"{met(row['best_acc'] >= 0.94 and row['best_train_s'] <= 1800)})")
        for target in TARGETS:
            key = f"t{round(target * 100)}_s"
            print(f"  time to {target:.0%} validation accuracy: {row[key]} s")
    if row.get("ablation"):
        print(f"\n{'ablation (' + str(row['ablation'][0]['epochs']) + ' epochs each)':<60}{'test acc':>8}")
        for r in row["ablation"]:
            print(f"{r['variant']:<60}{r['test_acc']:>8.4f}")


if __name__ == "__main__":
    sys.exit(main())
