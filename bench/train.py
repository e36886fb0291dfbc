"""Training on CIFAR-10: the seed recipe through Fusion vs a plain ``model.fit``, and the best recipe.

CIFAR-10's own split (``train/`` 50k, ``test/`` 10k JPEGs) is ingested and
preprocessed through Fusion; 10% of train is held out for validation. Then, in
one run on this machine:

- plain: the seed recipe (seed CNN, Adam, batch 64, 10 epochs) as a single-process
  ``model.fit`` over the same rows in memory, validating every epoch like Fusion;
- ray1: the seed recipe through Fusion's train stage (Ray Train
  ``TensorflowTrainer``, 1 worker), timed end to end: Ray datasets, training,
  checkpoints, holdout evaluation and registration; ray2 (not run by default,
  about 15 minutes on 2 cores): the same with 2 workers;
- best: the ``best`` recipe with its epochs cut to fit 30 minutes of training
  here (``--best-epochs``), with its accuracy-vs-time curve.

Both sides use the same dtype policy (bfloat16 compute on CPUs with bf16
instructions; see ``fusion_core.train.precision_policy``).

    python bench/train.py [--parts plain,ray1,best] [--best-epochs 14]

Writes bench/results/train.json (parts measured before are kept) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cifar import cifar_folder  # noqa: E402

RESULTS = HERE / "results" / "train.json"
PARTS = ("plain", "ray1", "ray2", "best")


def plain_fit(store, pixels: dict, epochs: int, batch_size: int, policy: str) -> dict:
    """The seed recipe as one in-process ``model.fit`` on the pixels dataset's rows; timed fit + test."""
    import tf_keras

    from fusion_core.datasets import read_shards
    from fusion_core.model import build_model
    from fusion_core.scoring import class_names, to_xy

    paths = [s["path"] for s in pixels["shards"]]
    shape, classes = tuple(pixels["info"]["shape"]), class_names(store, paths)
    table = read_shards(store.root, paths, columns=["pixels", "label", "split"])
    train, val, test = (to_xy(table, classes, shape, split) for split in ("train", "val", "test"))
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
    return {"plain_s": round(seconds, 1), "plain_acc": round(float(accuracy), 4), "train_images": len(train["y"]),
            "val_images": len(val["y"]), "test_images": len(test["y"])}


def fusion_train(settings, store, pixels_version: int, overrides: dict, run_id: str) -> tuple[dict, float]:
    """Fusion's train stage on ``pixels_version`` with ``overrides`` on top of ``settings``; returns the
    registered model and seconds."""
    from fusion_core.train import train_model

    settings = settings.model_copy(update={"train": settings.train.model_copy(update=overrides)})
    started = time.perf_counter()
    result = train_model(settings, store, pixels_version, run_id)
    seconds = time.perf_counter() - started
    return store.get_model(result.outputs["model_version"]), seconds


def curve(model: dict) -> list[list[float]]:
    """[[cumulative training seconds, validation accuracy], ...] per epoch."""
    points, total = [], 0.0
    for epoch in model["metrics"]["history"]:
        total += epoch["seconds"]
        points.append([round(total, 1), round(epoch["val_accuracy"], 4)])
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data", help="holds train/<class>/*.jpg and test/...")
    parser.add_argument("--parts", default="plain,ray1,best", help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--best-epochs", type=int, default=14, help="the best recipe's epochs (its schedule "
                                                                    "spans them); 14 fit 30 min here")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)} (allowed: {', '.join(PARTS)})")
    os.environ.setdefault("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")

    from fusion_core.config import load_settings
    from fusion_core.ingest import ingest_source
    from fusion_core.preprocess import preprocess_dataset
    from fusion_core.recipes import RECIPES
    from fusion_core.store import Store
    from fusion_core.train import precision_policy

    for split in ("train", "test"):
        cifar_folder(args.data / split, split)
    workdir = Path(tempfile.mkdtemp(prefix="fusion-bench-train-"))
    settings = load_settings(None, {"store.root": str(workdir / "store"), "train.retrain": "always",
                                    "ingest.val_fraction": 0.1})
    store = Store.from_settings(settings)
    started = time.perf_counter()
    images_version = ingest_source(settings, store, str(args.data), "bench-ingest").outputs["version"]
    pixels_version = preprocess_dataset(settings, store, images_version, "bench-preprocess").outputs["version"]
    print(f"ingest + preprocess: {time.perf_counter() - started:.0f} s", flush=True)
    pixels = store.require_version("pixels", pixels_version)
    policy = precision_policy(settings.train.mixed_precision)
    seed = RECIPES["seed"]

    row = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    row["policy"] = policy
    for part in parts:
        print(f"--- {part}", flush=True)
        if part == "plain":
            row.update(plain_fit(store, pixels, seed.epochs, seed.batch_size, policy))
        elif part in ("ray1", "ray2"):
            model, seconds = fusion_train(settings, store, pixels_version,
                                          {"recipe": "seed", "num_workers": int(part[-1])}, f"bench-{part}")
            row.update({f"{part}_s": round(seconds, 1), f"{part}_acc": round(model["metrics"]["accuracy"], 4)})
            if part == "ray1":
                row.update({"seed_acc": row["ray1_acc"], "seed_s": row["ray1_s"]})
        else:
            model, seconds = fusion_train(settings, store, pixels_version,
                                          {"recipe": "best", "num_workers": 1, "epochs": args.best_epochs},
                                          "bench-best")
            points = curve(model)
            row.update({"best_acc": round(model["metrics"]["accuracy"], 4), "best_s": round(seconds, 1),
                        "best_train_s": points[-1][0], "best_model": model["name"], "best_epochs": len(points),
                        "best_ece": round(model["metrics"]["ece"], 4), "best_curve": points})
            shutil.copy(model["path"], HERE / "results" / "best_model.keras")
        if "ray1_s" in row and "plain_s" in row:
            row["overhead"] = round(row["ray1_s"] / row["plain_s"], 3)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(row, indent=2) + "\n")

    print(f"\ndtype policy: {policy}; images: {row.get('train_images')} train, {row.get('val_images')} val, "
          f"{row.get('test_images')} test")
    print(f"{'':<44}{'seconds':>9}{'test acc':>10}")
    for label, s, acc in (("seed recipe, plain model.fit (1 process)", "plain_s", "plain_acc"),
                          ("seed recipe, Fusion, 1 Ray Train worker", "ray1_s", "ray1_acc"),
                          ("seed recipe, Fusion, 2 Ray Train workers", "ray2_s", "ray2_acc"),
                          ("best recipe, Fusion, 1 worker", "best_s", "best_acc")):
        if s in row:
            print(f"{label:<44}{row[s]:>9.1f}{row[acc]:>10.4f}")
    if "overhead" in row:
        print(f"Ray Train overhead {row['overhead']:.2f}x (goal <= 1.15x: {'met' if row['overhead'] <= 1.15 else 'not met'})")
    if "best_acc" in row:
        print(f"best recipe: {row['best_acc']:.4f} after {row['best_train_s']:.0f} s of training "
              f"(done at 0.85: {'met' if row['best_acc'] >= 0.85 else 'not met'}; goal 0.90: "
              f"{'met' if row['best_acc'] >= 0.90 else 'not met'})")
        print("accuracy vs time (s, val acc): " + ", ".join(f"{s:.0f}:{a:.3f}" for s, a in row["best_curve"]))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
