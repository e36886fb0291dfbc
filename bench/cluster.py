"""Clustering CIFAR-10 test images: the best model's embeddings vs raw pixels; Fusion's k-means vs scikit-learn's.

The 10,000 CIFAR-10 test JPEGs go through Fusion's ingest, preprocess, infer
(embeddings of the model from ``bench/train.py``, the project's best) and
cluster stages (k = 10, the number of labels). The same k-means then runs on
the raw pixels, and scikit-learn's ``KMeans`` (same k, restarts and seed) on the
same normalised embeddings, timed against ``fusion_core.stages.cluster.kmeans``.

    python bench/cluster.py [--data bench/data/test] [--model bench/results/best_model.keras] [--reduce whiten]

Writes bench/results/cluster.json and prints a table.
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

N_INIT = 3  # k-means restarts, both implementations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "cifar10" / "test")
    parser.add_argument("--model", type=Path, default=HERE / "results" / "best_model.keras",
                        help="a model trained on CIFAR-10 (bench/train.py saves its best recipe's model here)")
    parser.add_argument("--reduce", choices=["none", "pca", "whiten"], default="none", help="cluster.reduce")
    args = parser.parse_args()
    if not args.model.exists():
        parser.error(f"--model: {args.model} does not exist; run `python bench/train.py --parts best` first")
    context = run_context()
    os.environ.setdefault("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")

    import numpy as np
    from sklearn.cluster import KMeans

    from fusion_core.config import load_settings
    from fusion_core.learning import registry
    from fusion_core.learning.clustering import cluster_embeddings, cluster_quality, kmeans, normalize_rows
    from fusion_core.stages.cluster import cluster_predictions
    from fusion_core.stages.infer import infer_dataset
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.stages.preprocess import preprocess_dataset
    from fusion_core.store import Store
    from fusion_core.store.datasets import fixed_list_to_array, pixels_to_array, read_shards, shape_of

    workdir = Path(tempfile.mkdtemp(prefix="fusion-bench-cluster-"))
    settings = load_settings(None, {"store.root": str(workdir / "store"), "cluster.k": 10,
                                    "cluster.reduce": args.reduce})
    store = Store.from_settings(settings)
    source = cifar_folder(args.data, "test")
    images_version = ingest_source(settings, store, str(source), "bench-ingest").outputs["version"]
    pixels_version = preprocess_dataset(settings, store, images_version, "bench-preprocess").outputs["version"]
    pixels = store.require_version("pixels", pixels_version)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    model = registry.register_model(store, str(args.model), classes, run_id="bench", name=args.model.stem, key="bench",
                                    dataset_version=pixels_version, metrics={"accuracy": 0.0, "macro_f1": 0.0, "n": 0},
                                    config={})
    store.set_champion(model["version"], reason="benchmark model")
    predictions_version = infer_dataset(settings, store, pixels_version, model["version"],
                                        "bench-infer").outputs["version"]
    result = cluster_predictions(settings, store, predictions_version, "bench-cluster")

    preds = store.require_version("predictions", predictions_version)
    table = read_shards(store.root, [s["path"] for s in preds["shards"]], columns=["label", "embedding"])
    labels = table.column("label").to_pylist()
    embeddings = normalize_rows(fixed_list_to_array(table.column("embedding"))).astype(np.float32)
    started = time.perf_counter()
    kmeans(embeddings, 10, seed=0, n_init=N_INIT)
    fusion_s = time.perf_counter() - started
    started = time.perf_counter()
    sk = KMeans(n_clusters=10, n_init=N_INIT, random_state=0).fit_predict(embeddings)
    sklearn_s = time.perf_counter() - started
    sk_quality = cluster_quality(embeddings, sk, labels)

    raw = read_shards(store.root, [s["path"] for s in pixels["shards"]], columns=["pixels", "label"])
    x = pixels_to_array(raw.column("pixels"), shape_of(raw.schema)).reshape(raw.num_rows, -1).astype(np.float32) / 255
    assignments, _, _ = cluster_embeddings(x, settings.cluster, 10)
    raw_quality = cluster_quality(x, assignments, raw.column("label").to_pylist())

    m = result.metrics
    row = {"images": len(labels), "model": args.model.name, "embedding_dim": embeddings.shape[1], "reduce": args.reduce,
           "nmi": round(m["nmi"], 4), "ari": round(m["ari"], 4), "acc": round(m["cluster_accuracy"], 4),
           "silhouette": round(m["silhouette"], 4), "davies_bouldin": round(m["davies_bouldin"], 4),
           "nmi_raw_pixels": round(raw_quality["nmi"], 4), "ari_raw_pixels": round(raw_quality["ari"], 4),
           "acc_raw_pixels": round(raw_quality["cluster_accuracy"], 4),
           "fusion_kmeans_s": round(fusion_s, 3), "sklearn_kmeans_s": round(sklearn_s, 3),
           "sklearn_nmi": round(sk_quality["nmi"], 4), "goal_met": m["nmi"] >= 0.80}
    write_results("cluster", row, context)
    print(f"\n{row['images']} CIFAR-10 test images, k = 10")
    print(f"{'':<38}{'NMI':>8}{'ARI':>8}{'acc':>8}")
    print(f"{'best model embeddings, Fusion k-means':<38}{row['nmi']:>8.3f}{row['ari']:>8.3f}{row['acc']:>8.3f}")
    print(f"{'raw pixels, Fusion k-means':<38}{row['nmi_raw_pixels']:>8.3f}{row['ari_raw_pixels']:>8.3f}"
          f"{row['acc_raw_pixels']:>8.3f}")
    print(f"NMI goal >= 0.80 on embeddings: {'met' if row['goal_met'] else 'not met'}")
    print(f"k-means on {embeddings.shape[1]}-d embeddings ({N_INIT} restarts): Fusion {fusion_s:.2f} s, "
          f"scikit-learn {sklearn_s:.2f} s (its NMI {row['sklearn_nmi']:.3f})")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
