"""Batch inference: Fusion's infer stage vs a plain in-process ``model.predict``, in one run, at 10k and 1M.

Fusion's figure is end to end: loading the model, predicting the pixels dataset and committing the
predictions (Parquet shards and the SQL table); 10k images are predicted in the driver's process, 1M
on the Ray actor pool (``infer.in_process_max``). The baseline is ``model.predict`` over the same
images already in memory (its best case). 10k: CIFAR-10's test set; 1M: random 32x32 pixels written
straight to a pixels dataset (the cost of inference does not depend on the content).

    python bench/infer.py [--data bench/data/test] [--model PATH.keras] [--large 1000000]

Writes bench/results/infer.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cifar import cifar_folder  # noqa: E402
from record import run_context, write_results  # noqa: E402

SHARD_ROWS = 100_000


def random_pixels(store, n: int, classes: list[str]) -> int:
    """A pixels version of ``n`` random 32x32 RGB images in shards of 100,000; returns its version."""
    import numpy as np
    import pyarrow as pa

    from fusion_core.store.datasets import array_to_pixels, pixels_schema, write_shard

    rng = np.random.default_rng(0)
    manifest = []
    for start in range(0, n, SHARD_ROWS):
        m = min(SHARD_ROWS, n - start)
        table = pa.table({"image_id": [f"{start + i:064x}" for i in range(m)],
                          "label": [classes[i % len(classes)] for i in range(m)], "split": ["test"] * m,
                          "pixels": array_to_pixels(rng.integers(0, 256, (m, 32, 32, 3), dtype=np.uint8)),
                          "imputed_fraction": pa.array(np.zeros(m, np.float32)),
                          "impute_method": pa.array([None] * m, pa.string())}, schema=pixels_schema(32, 32, 3))
        manifest.append(write_shard(store.root, f"datasets/pixels/random-{start:08d}.parquet", table))
    return store.commit_version("pixels", manifest, "bench", info={"shape": [32, 32, 3], "scale": "unit"})


def measure(settings, store, pixels_version: int, model_version: int, batch_size: int, run_id: str) -> dict:
    """Fusion's infer stage, then plain ``model.predict`` over the same pixels in memory."""
    from fusion_core.learning import registry
    from fusion_core.stages.infer import infer_dataset
    from fusion_core.store.datasets import pixels_to_array, read_shards

    pixels = store.require_version("pixels", pixels_version)
    started = time.perf_counter()
    result = infer_dataset(settings, store, pixels_version, model_version, run_id)
    fusion_s = time.perf_counter() - started
    table = read_shards(store.root, [s["path"] for s in pixels["shards"]], columns=["pixels"])
    x = pixels_to_array(table.column("pixels"), tuple(pixels["info"]["shape"]))
    model = registry.load_published(store.get_model(model_version)["path"])
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)  # warm-up, not timed
    started = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    plain_s = time.perf_counter() - started
    n = result.counts["predictions"]
    return {"images": n, "fusion_s": round(fusion_s, 2), "plain_s": round(plain_s, 2),
            "fusion_img_s": round(n / fusion_s, 1), "plain_img_s": round(len(x) / plain_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "cifar10" / "test")
    parser.add_argument("--model", type=Path, help="a trained .keras model; default: an untrained seed CNN "
                                                    "(throughput does not depend on the weights)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--large", type=int, default=1_000_000, help="images of the large run (0: skip it)")
    args = parser.parse_args()
    context = run_context()
    os.environ.setdefault("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")

    from fusion_core.config import load_settings
    from fusion_core.learning import registry
    from fusion_core.learning.model import build_model
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.stages.preprocess import preprocess_dataset
    from fusion_core.store import Store

    workdir = Path(tempfile.mkdtemp(prefix="fusion-bench-infer-"))
    settings = load_settings(None, {"store.root": str(workdir / "store"), "infer.batch_size": args.batch_size})
    store = Store.from_settings(settings)
    source = cifar_folder(args.data, "test")
    images_version = ingest_source(settings, store, str(source), "bench-ingest").outputs["version"]
    pixels_version = preprocess_dataset(settings, store, images_version, "bench-preprocess").outputs["version"]
    shape = tuple(store.require_version("pixels", pixels_version)["info"]["shape"])
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model_file = (str(args.model) if args.model
                      else registry.save_model_file(build_model("seed_cnn", shape, len(classes)), tmp))
        registered = registry.register_model(store, model_file, classes, run_id="bench", name="seed_cnn", key="bench",
                                             dataset_version=pixels_version,
                                             metrics={"accuracy": 0.0, "macro_f1": 0.0, "n": 0}, config={})
    store.set_champion(registered["version"], reason="benchmark model")

    row = measure(settings, store, pixels_version, registered["version"], args.batch_size, "bench-infer")
    row["ratio"] = round(row["fusion_img_s"] / row["plain_img_s"], 3)
    runs = [("10k", row)]
    if args.large:
        large = measure(settings, store, random_pixels(store, args.large, classes), registered["version"],
                        args.batch_size, "bench-infer-large")
        row.update({"images_1m": large["images"], "fusion_s_1m": large["fusion_s"], "plain_s_1m": large["plain_s"],
                    "fusion_img_s_1m": large["fusion_img_s"], "plain_img_s_1m": large["plain_img_s"],
                    "ratio_1m": round(large["fusion_img_s"] / large["plain_img_s"], 3)})
        runs.append(("1M", large))
    row["goal_met"] = all(r["fusion_img_s"] >= 0.8 * r["plain_img_s"] for _, r in runs)
    write_results("infer", row, context)
    print(f"{'':<38}{'images':>9}{'seconds':>10}{'img/s':>10}")
    for name, r in runs:
        print(f"{'Fusion infer (' + name + ', commit included)':<38}{r['images']:>9}{r['fusion_s']:>10.2f}"
              f"{r['fusion_img_s']:>10.1f}")
        print(f"{'plain model.predict (' + name + ', in memory)':<38}{r['images']:>9}{r['plain_s']:>10.2f}"
              f"{r['plain_img_s']:>10.1f}")
        print(f"  ratio {r['fusion_img_s'] / r['plain_img_s']:.2f}x")
    print(f"goal >= 0.8x at every size: {'met' if row['goal_met'] else 'not met'}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
