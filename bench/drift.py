"""Drift checks on generated nights: how often a no-change night is flagged (false alarms), and how often
each kind of injected drift is caught.

A base store holds yesterday's demo images and a champion trained on them. Each trial copies that
store, ingests one night of new demo images (a fresh seed), preprocesses them and runs the drift stage:

- no change: the same generator, new images;
- class mix: only three of the ten classes arrive;
- darker: every image at 45% brightness (a new camera);
- holes: 60% of the images have missing pixels instead of 10%.

    python bench/drift.py [--nights 200] [--drifted 20] [--per-class 20]

Writes bench/results/drift.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "drift.json"
KINDS = ("no change", "class mix", "darker", "holes")


def night_images(out: Path, kind: str, per_class: int, seed: int) -> None:
    """One night of demo images of ``kind`` under ``out``."""
    from fusion_core.demo_data import CLASSES, generate_demo_images

    if kind == "holes":
        generate_demo_images(out, per_class=per_class, seed=seed, corrupt=0, missing_fraction=0.6)
        return
    generate_demo_images(out, per_class=per_class * (3 if kind == "class mix" else 1), seed=seed, corrupt=0)
    if kind == "class mix":
        for name in CLASSES[3:]:
            shutil.rmtree(out / name)
    if kind == "darker":
        for path in out.glob("*/*"):
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
            path.unlink()
            Image.fromarray((rgb * 0.45).astype(np.uint8)).save(path.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=200, help="no-change nights")
    parser.add_argument("--drifted", type=int, default=20, help="nights of each kind of drift")
    parser.add_argument("--per-class", type=int, default=20, help="new images per class per night")
    parser.add_argument("--base-per-class", type=int, default=200, help="yesterday's images per class")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from fusion_core.config import load_settings
    from fusion_core.demo_data import generate_demo_images
    from fusion_core.drift import check_drift
    from fusion_core.ingest import ingest_source
    from fusion_core.preprocess import preprocess_dataset
    from fusion_core.store import Store
    from fusion_core.train import train_model

    trials = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="fusion-drift-bench-") as tmp:
        work = Path(tmp)
        base = {"ray.num_cpus": 2, "train.num_workers": 1, "train.epochs": 10}

        def night(root: Path, source: Path, run: str) -> dict:
            settings = load_settings(None, {**base, "store.root": str(root)})
            store = Store.from_settings(settings)
            images = ingest_source(settings, store, str(source), run).outputs["version"]
            pixels = preprocess_dataset(settings, store, images, run).outputs["version"]
            return check_drift(settings, store, pixels, run).as_dict()

        generate_demo_images(work / "yesterday", per_class=args.base_per_class, seed=0, corrupt=0)
        night(work / "base", work / "yesterday", "yesterday")
        settings = load_settings(None, {**base, "store.root": str(work / "base")})
        store = Store.from_settings(settings)
        champion = train_model(settings, store, store.latest_version("pixels")["version"], "yesterday")
        print(f"champion: holdout accuracy {champion.metrics['accuracy']:.3f}", flush=True)

        seed = 1000
        for kind in KINDS:
            for _ in range(args.nights if kind == "no change" else args.drifted):
                seed += 1
                shutil.copytree(work / "base", work / "trial")
                night_images(work / "source", kind, args.per_class, seed)
                started = time.perf_counter()
                result = night(work / "trial", work / "source", f"night-{seed}")
                checks = {c["check"]: [c["value"], c["p_value"]] for c in result["outputs"]["checks"]}
                trials[kind].append({"flagged": result["outputs"]["flagged"], "checks": checks,
                                     "seconds": round(time.perf_counter() - started, 1),
                                     "new_images": result["counts"]["new_images"]})
                print(f"{kind:<10} night {len(trials[kind]):>2}: flagged {result['outputs']['flagged']}", flush=True)
                shutil.rmtree(work / "trial")
                shutil.rmtree(work / "source")

    summary = {}
    for kind, t in trials.items():
        flagged = sum(bool(r["flagged"]) for r in t)
        fired = sorted({c for r in t for c in r["flagged"]})
        summary[kind] = {"nights": len(t), "flagged_nights": flagged, "rate": round(flagged / max(len(t), 1), 3),
                         "by_check": {c: sum(c in r["flagged"] for r in t) for c in fired}}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"per_class": args.per_class, "base_per_class": args.base_per_class,
                                   "champion_accuracy": champion.metrics["accuracy"], "summary": summary,
                                   "trials": trials}, indent=2))
    print(f"\n{'night':<10} {'nights':>6} {'flagged':>8} {'rate':>6}  checks that fired")
    for kind, s in summary.items():
        print(f"{kind:<10} {s['nights']:>6} {s['flagged_nights']:>8} {s['rate']:>6.2f}  {s['by_check']}")


if __name__ == "__main__":
    main()
