"""k-means at a million embeddings: Fusion's large-dataset clustering vs scikit-learn's MiniBatchKMeans.

The embeddings are synthetic: 512-d rows of 10 classes, each a Gaussian around its own random
direction, noisy enough that clusterings disagree with the labels now and then. Fusion clusters as
its cluster stage does above ``cluster.sample_size``: k-means (3 restarts) on a uniform sample, then
every row to its nearest centre, a chunk at a time. The baseline, in the same run, is scikit-learn's
``MiniBatchKMeans`` (3 restarts, batches of 4,096) over all the rows. Both see the same L2-normalised
rows; quality is NMI against the classes.

    python bench/kmeans.py [--images 1000000] [--dim 512] [--sample 100000]

Writes bench/results/kmeans.json and prints a table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from record import run_context, write_results

K = 10
CHUNK = 100_000


def embeddings(n: int, dim: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 rows of ``K`` classes around random unit directions, and their class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, K, n)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        part = labels[start:start + CHUNK]
        x[start:start + len(part)] = centres[part] + rng.normal(scale=noise, size=(len(part), dim)).astype(np.float32)
    return x, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sample", type=int, default=100_000, help="cluster.sample_size")
    parser.add_argument("--noise", type=float, default=0.3, help="per-dimension noise around each class")
    args = parser.parse_args()
    context = run_context()

    from sklearn.cluster import MiniBatchKMeans

    from fusion_core.config import ClusterConfig
    from fusion_core.learning.clustering import contingency, fit_clusters, label_scores, normalize_rows

    x, labels = embeddings(args.images, args.dim, args.noise)
    x = normalize_rows(x).astype(np.float32)
    names = [str(v) for v in labels]

    started = time.perf_counter()
    sample = np.sort(np.random.default_rng(0).choice(len(x), size=min(args.sample, len(x)), replace=False))
    clusters, _, _ = fit_clusters(x[sample], ClusterConfig(k=K, sample_size=args.sample), K)
    fusion = np.concatenate([clusters.nearest(clusters.prepare(x[i:i + CHUNK]))[0] for i in range(0, len(x), CHUNK)])
    fusion_s = time.perf_counter() - started

    started = time.perf_counter()
    baseline = MiniBatchKMeans(n_clusters=K, n_init=3, batch_size=4096, random_state=0).fit_predict(x)
    sklearn_s = time.perf_counter() - started

    fusion_nmi = label_scores(contingency(fusion, names))["nmi"]
    sklearn_nmi = label_scores(contingency(baseline, names))["nmi"]
    row = {"images": len(x), "dim": x.shape[1], "k": K, "sample": len(sample), "noise": args.noise,
           "fusion_s": round(fusion_s, 2), "fusion_nmi": round(fusion_nmi, 4),
           "sklearn_minibatch_s": round(sklearn_s, 2), "sklearn_minibatch_nmi": round(sklearn_nmi, 4),
           "goal_met": fusion_s <= sklearn_s and fusion_nmi >= sklearn_nmi - 0.01}
    write_results("kmeans", row, context)
    print(f"{row['images']} x {row['dim']} embeddings, k = {K}")
    print(f"{'':<44}{'seconds':>9}{'NMI':>8}")
    print(f"{'Fusion (k-means on ' + str(len(sample)) + ', then nearest)':<44}{fusion_s:>9.2f}{fusion_nmi:>8.3f}")
    print(f"{'scikit-learn MiniBatchKMeans':<44}{sklearn_s:>9.2f}{sklearn_nmi:>8.3f}")
    print(f"goal (no slower at equal NMI): {'met' if row['goal_met'] else 'not met'}")


if __name__ == "__main__":
    main()
