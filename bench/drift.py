"""Drift checks on generated nights: how often a no-change night is flagged (false alarms), per check and in
all, and how often each kind of injected drift is caught.

Each base store holds yesterday's demo images (its own seed) and a champion trained on them; the nights
are spread over the bases. Each trial copies a base store, ingests one night of new demo images (a fresh
seed), preprocesses them and runs the drift stage:

- no change: the same generator, new images;
- class mix: only three of the ten classes arrive;
- darker: every image at 45% brightness (a new camera);
- holes: 60% of the images have missing pixels instead of 10%.

    python bench/drift.py [--nights 200] [--drifted 20] [--per-class 20] [--bases 2]

A check's false-alarm rate is the share of no-change nights it flagged (Holm-adjusted p below drift.alpha);
its goal is at most alpha, up to binomial noise (the one-sided 95% bound for that many nights). A check whose
value and p-value were the same on every no-change night cannot fire on one (for example image sizes, when
every image has one size) and is reported as constant.

Writes bench/results/drift.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from record import run_context, write_results

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


def false_alarms(nights: list[dict], alpha: float) -> dict:
    """Per check: no-change nights flagged, its rate, the rate of raw p-values below alpha, whether it was
    constant, and the goal (at most alpha, with the one-sided 95% binomial allowance for this many nights)."""
    from scipy.stats import binom

    allowed = int(binom.ppf(0.95, len(nights), alpha))
    out = {}
    for check in sorted({c for night in nights for c in night["checks"]}):
        values = [tuple(night["checks"][check]) for night in nights if check in night["checks"]]
        flagged = sum(check in night["flagged"] for night in nights)
        raw = sum((v[1] if len(v) > 1 else None) is not None and v[1] < alpha for v in values)
        out[check] = {"nights": len(values), "flagged": flagged, "rate": round(flagged / max(len(values), 1), 4),
                      "raw_p_below_alpha": raw, "constant": len(set(values)) == 1,
                      "allowed": allowed, "met": flagged <= allowed}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=200, help="no-change nights, over all base stores")
    parser.add_argument("--drifted", type=int, default=20, help="nights of each kind of drift")
    parser.add_argument("--per-class", type=int, default=20, help="new images per class per night")
    parser.add_argument("--base-per-class", type=int, default=200, help="yesterday's images per class")
    parser.add_argument("--bases", type=int, default=2, help="base stores, each with its own data and champion")
    args = parser.parse_args()
    context = run_context()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from fusion_core.config import load_settings
    from fusion_core.demo_data import generate_demo_images
    from fusion_core.stages.drift import check_drift
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.stages.preprocess import preprocess_dataset
    from fusion_core.stages.train import train_model
    from fusion_core.store import Store

    trials = {kind: [] for kind in KINDS}
    champions = []
    with tempfile.TemporaryDirectory(prefix="fusion-drift-bench-") as tmp:
        work = Path(tmp)
        base = {"ray.num_cpus": 2, "train.num_workers": 1, "train.epochs": 10}
        alpha = load_settings(None, base).drift.alpha

        def night(root: Path, source: Path, run: str) -> dict:
            settings = load_settings(None, {**base, "store.root": str(root)})
            store = Store.from_settings(settings)
            images = ingest_source(settings, store, str(source), run).outputs["version"]
            pixels = preprocess_dataset(settings, store, images, run).outputs["version"]
            return check_drift(settings, store, pixels, run, store.champion_version()).as_dict()

        for b in range(args.bases):
            generate_demo_images(work / f"yesterday-{b}", per_class=args.base_per_class, seed=b, corrupt=0)
            night(work / f"base-{b}", work / f"yesterday-{b}", "yesterday")
            settings = load_settings(None, {**base, "store.root": str(work / f"base-{b}"), "train.seed": b})
            store = Store.from_settings(settings)
            champion = train_model(settings, store, store.latest_version("pixels")["version"], "yesterday", None)
            champions.append({"base": b, "seed": b, "accuracy": champion.metrics["accuracy"]})
            print(f"base {b}: champion's holdout accuracy {champion.metrics['accuracy']:.3f}", flush=True)

        seed = 1000
        for kind in KINDS:
            for i in range(args.nights if kind == "no change" else args.drifted):
                seed += 1
                b = i % args.bases
                shutil.copytree(work / f"base-{b}", work / "trial")
                night_images(work / "source", kind, args.per_class, seed)
                started = time.perf_counter()
                result = night(work / "trial", work / "source", f"night-{seed}")
                checks = {c["check"]: [c["value"], c["p_value"]] for c in result["outputs"]["checks"]}
                trials[kind].append({"base": b, "flagged": result["outputs"]["flagged"], "checks": checks,
                                     "seconds": round(time.perf_counter() - started, 1),
                                     "new_images": result["counts"]["new_images"]})
                print(f"{kind:<10} night {len(trials[kind]):>3} (base {b}): flagged {result['outputs']['flagged']}",
                      flush=True)
                shutil.rmtree(work / "trial")
                shutil.rmtree(work / "source")

    summary = {}
    for kind, t in trials.items():
        flagged = sum(bool(r["flagged"]) for r in t)
        fired = sorted({c for r in t for c in r["flagged"]})
        summary[kind] = {"nights": len(t), "flagged_nights": flagged, "rate": round(flagged / max(len(t), 1), 3),
                         "by_check": {c: sum(c in r["flagged"] for r in t) for c in fired}}
    quiet = false_alarms(trials["no change"], alpha)
    write_results("drift", {"alpha": alpha, "per_class": args.per_class, "base_per_class": args.base_per_class,
                            "bases": args.bases, "champions": champions, "false_alarms": quiet,
                            "summary": summary, "trials": trials}, context)
    print(f"\n{'night':<10} {'nights':>6} {'flagged':>8} {'rate':>6}  checks that fired")
    for kind, s in summary.items():
        print(f"{kind:<10} {s['nights']:>6} {s['flagged_nights']:>8} {s['rate']:>6.2f}  {s['by_check']}")
    print(f"\nno-change nights, per check (alpha {alpha}):")
    print(f"{'check':<16} {'flagged':>8} {'rate':>7} {'raw p<alpha':>12} {'allowed':>8}  goal")
    for check, q in quiet.items():
        goal = "constant on quiet nights" if q["constant"] else ("met" if q["met"] else "not met")
        print(f"{check:<16} {q['flagged']:>8} {q['rate']:>7.3f} {q['raw_p_below_alpha']:>12} {q['allowed']:>8}  {goal}")


if __name__ == "__main__":
    main()
