"""Batch inference: Fusion's infer stage vs a plain in-process ``model.predict``, in one run.

Fusion's figure is end to end: Ray Data actors loading the model, predicting the
pixels dataset and writing predictions (Parquet + SQL table). The baseline is
``model.predict`` over the same images already in memory (its best case).

    python bench/infer.py [--data bench/data/test] [--model PATH.keras]

Writes bench/results/infer.json and prints a table.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "test")
    parser.add_argument("--model", type=Path, help="a trained .keras model; default: an untrained seed CNN "
                                                    "(throughput does not depend on the weights)")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    os.environ.setdefault("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")

    from fusion_core import registry
    from fusion_core.config import load_settings
    from fusion_core.datasets import pixels_to_array, read_shards, shape_of
    from fusion_core.infer import infer_dataset
    from fusion_core.ingest import ingest_source
    from fusion_core.model import build_model
    from fusion_core.preprocess import preprocess_dataset
    from fusion_core.store import Store

    workdir = Path(tempfile.mkdtemp(prefix="fusion-bench-infer-"))
    settings = load_settings(None, {"store.root": str(workdir / "store"), "infer.batch_size": args.batch_size})
    store = Store.from_settings(settings)
    source = cifar_folder(args.data, "test")
    images_version = ingest_source(settings, store, str(source), "bench-ingest").outputs["version"]
    pixels_version = preprocess_dataset(settings, store, images_version, "bench-preprocess").outputs["version"]
    pixels = store.require_version("pixels", pixels_version)
    shape = tuple(pixels["info"]["shape"])
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())

    metrics = {"accuracy": 0.0, "macro_f1": 0.0, "n": 0}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model_file = (str(args.model) if args.model
                      else registry.save_model_file(build_model("seed_cnn", shape, len(classes)), tmp))
        registered = registry.register_model(store, model_file, classes, run_id="bench", name="seed_cnn", key="bench",
                                             dataset_version=pixels_version, metrics=metrics, config={})
    store.set_champion(registered["version"])

    started = time.perf_counter()
    result = infer_dataset(settings, store, pixels_version, registered["version"], "bench-infer")
    fusion_s = time.perf_counter() - started
    n = result.counts["predictions"]

    table = read_shards(store.root, [s["path"] for s in pixels["shards"]], columns=["pixels"])
    x = pixels_to_array(table.column("pixels"), shape_of(table.schema))
    model = registry.load_published(registered["path"])
    model.predict(x[: args.batch_size], batch_size=args.batch_size, verbose=0)  # warm-up, not timed
    started = time.perf_counter()
    model.predict(x, batch_size=args.batch_size, verbose=0)
    plain_s = time.perf_counter() - started

    row = {"images": n, "fusion_s": round(fusion_s, 2), "plain_s": round(plain_s, 2),
           "fusion_img_s": round(n / fusion_s, 1), "plain_img_s": round(len(x) / plain_s, 1)}
    row["ratio"] = round(row["fusion_img_s"] / row["plain_img_s"], 3)
    row["goal_met"] = row["ratio"] >= 0.8
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "infer.json").write_text(json.dumps(row, indent=2) + "\n")
    print(f"{'':<34}{'images':>8}{'seconds':>10}{'img/s':>10}")
    print(f"{'Fusion infer (actors + store)':<34}{n:>8}{fusion_s:>10.2f}{row['fusion_img_s']:>10.1f}")
    print(f"{'plain model.predict (in memory)':<34}{len(x):>8}{plain_s:>10.2f}{row['plain_img_s']:>10.1f}")
    print(f"ratio {row['ratio']:.2f}x (goal >= 0.8x: {'met' if row['goal_met'] else 'not met'})")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
