"""Warm-start retraining on CIFAR-10: fine-tuning yesterday's champion on today's grown data vs training
from scratch, side by side.

"Yesterday" is 80% of CIFAR-10's training images (every image whose file name hashes into the first
80%), "today" all of them. Through Fusion's own stages, in one run on this machine:

1. ingest and preprocess yesterday's images, train the champion from scratch (``train.init: scratch``);
2. ingest today's folder (only the new 20% are added) and preprocess;
3. cold: train from scratch on today's data; warm: train from the champion (``train.init: champion``),
   both with the same recipe and epochs.

Reported, for each seed (every training of a seed uses it): per-epoch validation accuracy against training time
for both, the time the warm start takes to reach the cold start's final validation accuracy, both models'
holdout accuracy, and what the champion's own training cost (the warm start spends it the night before).

    python bench/warm_start.py [--data DIR] [--epochs 10] [--recipe seed] [--seeds 3]

``--data`` is the unpacked CIFAR-10 ``train`` folder (``<class>/*.jpg``; default: unpacked by
``bench/cifar.py``). Writes bench/results/warm_start.json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cifar import cifar_folder  # noqa: E402
from record import run_context, write_results  # noqa: E402


def yesterday_folder(today: Path, out: Path, fraction: float) -> int:
    """Symlinks to the images of ``today`` whose name hashes below ``fraction``; returns how many."""
    count = 0
    for path in sorted(today.glob("*/*")):
        if int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16) / 16 ** 8 < fraction:
            (out / path.parent.name).mkdir(parents=True, exist_ok=True)
            (out / path.parent.name / path.name).symlink_to(path)
            count += 1
    return count


def reach_time(history: list[dict], target: float) -> float | None:
    """Training seconds until validation accuracy first reaches ``target`` (None if it never does)."""
    elapsed = 0.0
    for epoch in history:
        elapsed += epoch["seconds"]
        if epoch["val_accuracy"] >= target:
            return elapsed
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="CIFAR-10 train folder (<class>/*.jpg)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--recipe", default="seed")
    parser.add_argument("--fraction", type=float, default=0.8, help="yesterday's share of the images")
    parser.add_argument("--seeds", type=int, default=3, help="seeds, each a champion, a warm and a cold start")
    args = parser.parse_args()
    context = run_context()
    today = args.data or cifar_folder(HERE / "data" / "cifar10" / "train", "train")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runs = []
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        work = Path(tmp)
        yesterday_n = yesterday_folder(today, work / "yesterday", args.fraction)
        for seed in range(args.seeds):
            runs.append(one_seed(seed, work, today, args))
            speedup = runs[-1]["speedup"]
            print(f"seed {seed}: warm start " + (f"{speedup}x faster" if speedup else "never reached the cold start"),
                  flush=True)

    speedups = [r["speedup"] for r in runs if r["speedup"]]
    result = {"recipe": args.recipe, "epochs": args.epochs, "yesterday_images": yesterday_n, "seeds": runs,
              "speedup_mean": round(statistics.mean(speedups), 2) if speedups else None,
              "speedup_min": min(speedups) if speedups else None,
              "champion_train_s_mean": round(statistics.mean(r["champion_train_s"] for r in runs), 1)}
    write_results("warm_start", result, context)
    print(f"\n{'seed':<5} {'run':<10} {'init':<14} {'val acc per epoch':<62} {'holdout':>8} {'train s':>8}")
    for r in runs:
        for name in ("champion", "cold", "warm"):
            curve = " ".join(f"{h['val_accuracy']:.3f}" for h in r[name]["history"])
            print(f"{r['seed']:<5} {name:<10} {r[name]['initialised_from']:<14} {curve:<62} "
                  f"{r[name]['holdout_accuracy']:>8.4f} {sum(h['seconds'] for h in r[name]['history']):>8.0f}")
    print(f"\nwarm start reached the cold start's final val accuracy in {len(speedups)} of {len(runs)} seeds, "
          f"{result['speedup_mean']}x faster on average there (at least {result['speedup_min']}x); the champion's own "
          f"training took {result['champion_train_s_mean']} s")


def one_seed(seed: int, work: Path, today: Path, args) -> dict:
    """Yesterday's champion, then today's warm and cold starts, all with ``train.seed`` = ``seed``, on a fresh
    store."""
    from fusion_core.config import load_settings
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.stages.preprocess import preprocess_dataset
    from fusion_core.stages.train import train_model
    from fusion_core.store import Store

    base = {"store.root": str(work / f"store-{seed}"), "train.recipe": args.recipe, "train.epochs": args.epochs,
            "train.num_workers": 1, "ingest.val_fraction": 0.1, "train.seed": seed}
    settings = load_settings(None, base)
    store = Store.from_settings(settings)

    def data(source: Path, run_id: str) -> int:
        images = ingest_source(settings, store, str(source), run_id).outputs["version"]
        return preprocess_dataset(settings, store, images, run_id).outputs["version"]

    def train(pixels: int, init: str, run_id: str) -> dict:
        started = time.perf_counter()
        outcome = train_model(load_settings(None, {**base, "train.init": init, "train.retrain": "always"}),
                              store, pixels, run_id, store.champion_version())
        model = store.get_model(outcome.outputs["model_version"])
        return {"version": model["version"], "stage_s": round(time.perf_counter() - started, 1),
                "initialised_from": model["config"]["initialised_from"],
                "holdout_accuracy": model["metrics"]["accuracy"], "holdout_images": model["metrics"]["n"],
                "history": [{k: h[k] for k in ("epoch", "seconds", "val_accuracy")}
                            for h in model["metrics"]["history"]],
                "promotion": outcome.outputs["promotion"]}

    champion = train(data(work / "yesterday", "yesterday"), "scratch", "yesterday")
    pixels = data(today, "today")
    warm = train(pixels, "champion", "today-warm")  # first, while yesterday's model is still champion
    cold = train(pixels, "scratch", "today-cold")
    target = cold["history"][-1]["val_accuracy"]
    cold_s = sum(h["seconds"] for h in cold["history"])
    warm_s = reach_time(warm["history"], target)
    return {"seed": seed, "champion": champion, "cold": cold, "warm": warm, "target_val_accuracy": target,
            "champion_train_s": round(sum(h["seconds"] for h in champion["history"]), 1),
            "cold_train_s": round(cold_s, 1), "warm_reach_s": None if warm_s is None else round(warm_s, 1),
            "speedup": None if not warm_s else round(cold_s / warm_s, 2)}


if __name__ == "__main__":
    main()
