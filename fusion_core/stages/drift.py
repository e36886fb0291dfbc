"""Drift: how a run's new images differ from the data the champion was trained on.

The reference is the champion's training data; the new images are those added since (the images
shards of this run's dataset that the champion's dataset did not have), preprocessed the same way.
Data checks (label mix, image size and channel mix, missing pixels, quarantine, pixel statistics)
read small per-shard summaries made by Ray tasks. Model checks (prediction confidence, embeddings,
cluster mix) score a sample of each side with the champion in one Ray task; the reference sample
comes from the test split only, which the champion never trained on.

Each check gives a value, a threshold and, where sampling noise matters, a p-value; it is flagged
when the value passes its threshold and (when there is one) its p-value, corrected for the number of
checks (Holm), is below ``drift.alpha``. A check over several channels corrects for them first
(Bonferroni on the smallest), so a quiet night is flagged at most ``drift.alpha`` of the time.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import numpy as np
import pyarrow.compute as pc

from fusion_core.config import DriftConfig, Settings
from fusion_core.data.runs import StageResult
from fusion_core.store import Store
from fusion_core.store.datasets import images_shard_stem, pixels_to_array, read_shard

log = logging.getLogger(__name__)

# Enough that the test's smallest p-value, 1 / (permutations + 1), still passes Holm's correction over a night's
# checks at the default drift.alpha (8 checks at 0.01 need fewer than 1 in 800).
MMD_PERMUTATIONS = 2000


# statistics ------------------------------------------------------------------------------------
def mix_check(name: str, reference: dict, new: dict, threshold: float, alpha: float) -> dict:
    """Two category counts compared: total variation distance of their proportions, chi-square p-value."""
    from scipy.stats import chi2_contingency

    keys = sorted(set(reference) | set(new), key=str)
    table = np.array([[reference.get(k, 0) for k in keys], [new.get(k, 0) for k in keys]], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return _check(name, 0.0, threshold, 1.0, alpha)
    tvd = 0.5 * float(np.abs(table[0] / table[0].sum() - table[1] / table[1].sum()).sum())
    return _check(name, tvd, threshold, float(chi2_contingency(table)[1]), alpha)


def shift_check(name: str, reference: dict, new: dict, threshold: float, alpha: float) -> dict:
    """Per-channel pixel statistics compared (``channel_stats`` of each side): the largest shift of the
    mean in reference standard deviations, or relative change of the standard deviation; the p-value
    is the smallest of Welch's tests on each channel's per-image means, Bonferroni-corrected for the
    number of channels."""
    from scipy.stats import ttest_ind_from_stats

    mean_shift = np.abs(new["mean"] - reference["mean"]) / np.maximum(reference["std"], 1e-6)
    spread = np.abs(new["std"] / np.maximum(reference["std"], 1e-6) - 1)
    p_values = np.nan_to_num(ttest_ind_from_stats(reference["image_mean"], reference["image_std"], reference["n"],
                                                  new["image_mean"], new["image_std"], new["n"],
                                                  equal_var=False).pvalue, nan=1.0)
    p_value = min(1.0, float(np.min(p_values)) * len(np.atleast_1d(p_values)))
    return _check(name, float(max(mean_shift.max(), spread.max())), threshold, p_value, alpha)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = MMD_PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """Squared maximum mean discrepancy of two samples (Gaussian kernel, median-distance bandwidth) and its
    permutation p-value. Permutations are scored in blocks as matrix products over group indicators."""
    z = np.concatenate([x, y]).astype(np.float64)
    sq = (z * z).sum(axis=1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
    bandwidth = np.median(d[np.triu_indices(len(z), 1)]) or 1.0
    k = np.exp(-d / bandwidth)
    n, m, diag = len(x), len(y), np.diag(k)
    rng = np.random.default_rng(seed)
    draws = [np.arange(n + m)] + [rng.permutation(n + m) for _ in range(permutations)]
    scores = []
    for block in range(0, len(draws), 256):
        first = np.zeros((len(draws[block:block + 256]), n + m))
        for row, order in enumerate(draws[block:block + 256]):
            first[row, order[:n]] = 1.0
        second = 1.0 - first
        within_first = ((first @ k) * first).sum(axis=1) - first @ diag
        within_second = ((second @ k) * second).sum(axis=1) - second @ diag
        between = ((first @ k) * second).sum(axis=1)
        scores.append(within_first / (n * (n - 1)) + within_second / (m * (m - 1)) - 2 * between / (n * m))
    scores = np.concatenate(scores)
    observed, null = scores[0], scores[1:]
    return float(observed), float((1 + (null >= observed).sum()) / (1 + permutations))


def _check(name: str, value: float, threshold: float, p_value: float | None, alpha: float) -> dict:
    """One check's outcome, flagged on its own p-value (``corrected`` then applies the night's correction)."""
    flagged = value > threshold and (p_value is None or p_value < alpha)
    return {"check": name, "value": round(value, 4), "threshold": threshold,
            "p_value": None if p_value is None else round(p_value, 6), "flagged": bool(flagged)}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at most alpha for any number of tests).

    SciPy offers Benjamini-Hochberg (false discovery rate) only; Holm controls what a nightly alarm needs, the
    chance of any false alarm on a quiet night.
    """
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def corrected(checks: list[dict], alpha: float) -> list[dict]:
    """The checks with ``p_adjusted`` (Holm over the checks that have a p-value) and ``flagged`` decided on it."""
    tested = [c for c in checks if c["p_value"] is not None]
    adjusted = dict(zip((c["check"] for c in tested), holm([c["p_value"] for c in tested])))
    out = []
    for c in checks:
        p = adjusted.get(c["check"])
        over = c["value"] > (c["threshold"] or 0.0)
        out.append({**c, "p_adjusted": None if p is None else round(p, 6),
                    "flagged": bool(over and (p is None or p < alpha))})
    return out


# per-shard summaries (Ray tasks) -----------------------------------------------------------------
def shard_summary(root: str, images_shard: str, pixels_shard: str, shape: tuple[int, int, int], take: int,
                  test_only: bool, seed: int) -> dict:
    """Counts, pixel sums and a random sample of up to ``take`` rows (test split only with ``test_only``)
    of one images shard and the pixels shard made from it."""
    images = read_shard(root, images_shard, columns=["height", "width", "channels", "mask"])
    sizes = pc.binary_join_element_wise(pc.cast(images.column("height"), "string"),
                                        pc.cast(images.column("width"), "string"),
                                        pc.cast(images.column("channels"), "string"), "x")
    pixels = read_shard(root, pixels_shard, columns=["label", "split", "pixels"])
    x = pixels_to_array(pixels.column("pixels"), shape).astype(np.float64)
    image_means = x.mean(axis=(1, 2))
    pool = np.flatnonzero(pc.equal(pixels.column("split"), "test").to_numpy(zero_copy_only=False)) if test_only \
        else np.arange(len(x))
    chosen = np.random.default_rng(seed).choice(pool, size=min(take, len(pool)), replace=False)
    return {"n": len(x), "sizes": _counts(sizes), "labels": _counts(pixels.column("label")),
            "missing": int(pc.sum(images.column("mask").is_valid()).as_py() or 0),
            "sum": x.sum(axis=(0, 1, 2)), "sumsq": (x * x).sum(axis=(0, 1, 2)), "pixels": shape[0] * shape[1],
            "image_sum": image_means.sum(axis=0), "image_sumsq": (image_means ** 2).sum(axis=0),
            "sample": x[np.sort(chosen)].astype(np.uint8)}


def _counts(column) -> dict:
    counts = pc.value_counts(column).to_pylist()
    return {str(c["values"]): int(c["counts"]) for c in counts}


def combine(summaries: list[dict]) -> dict:
    """One side's summary from its shards': summed counts, per-channel statistics and the joined sample."""
    n = sum(s["n"] for s in summaries)
    total = {key: {} for key in ("sizes", "labels")}
    for s in summaries:
        for key in total:
            for k, v in s[key].items():
                total[key][k] = total[key].get(k, 0) + v
    pixels = n * summaries[0]["pixels"]
    mean = sum(s["sum"] for s in summaries) / pixels
    image_mean = sum(s["image_sum"] for s in summaries) / n
    return {**total, "n": n, "missing": sum(s["missing"] for s in summaries), "mean": mean,
            "std": np.sqrt(np.maximum(sum(s["sumsq"] for s in summaries) / pixels - mean ** 2, 0)),
            "image_mean": image_mean,
            "image_std": np.sqrt(np.maximum(sum(s["image_sumsq"] for s in summaries) / n - image_mean ** 2, 0)),
            "sample": np.concatenate([s["sample"] for s in summaries])}


# model checks (one Ray task) ------------------------------------------------------------------------
def model_checks(model_path: str, reference: np.ndarray, new: np.ndarray, n_classes: int, cfg: DriftConfig,
                 seed: int = 0) -> list[dict]:
    """Prediction confidence, embedding MMD and cluster mix of two samples, as scored by one model."""
    from scipy.stats import ttest_ind

    from fusion_core.learning import registry
    from fusion_core.learning.clustering import kmeans, normalize_rows
    from fusion_core.learning.model import embedding_model
    from fusion_core.learning.scoring import predict_with_embeddings

    model = embedding_model(registry.load_published(model_path, compile=False))
    (ref_probs, ref_emb), (new_probs, new_emb) = (predict_with_embeddings(model, x, 256) for x in (reference, new))
    ref_conf, new_conf = ref_probs.max(axis=1), new_probs.max(axis=1)
    drop = float(ref_conf.mean() - new_conf.mean())
    confidence = _check("confidence_drop", drop, cfg.confidence_drop,
                        float(ttest_ind(ref_conf, new_conf, equal_var=False, alternative="greater").pvalue), cfg.alpha)
    ref_emb, new_emb = normalize_rows(ref_emb), normalize_rows(new_emb)
    value, p_value = mmd_test(ref_emb, new_emb, seed=seed)
    embedding = {**_check("embedding_mmd", value, 0.0, p_value, cfg.alpha), "threshold": None}
    k = max(2, min(n_classes, len(ref_emb) // 10))
    _, centers = kmeans(ref_emb, k, seed=seed)
    nearest = [np.argmin(((e[:, None, :] - centers[None]) ** 2).sum(axis=2), axis=1) for e in (ref_emb, new_emb)]
    clusters = mix_check("cluster_mix", *[dict(zip(*np.unique(a, return_counts=True))) for a in nearest],
                         cfg.cluster_mix, cfg.alpha)
    return [confidence, embedding, clusters]


# the stage ------------------------------------------------------------------------------------------
def check_drift(settings: Settings, store: Store, pixels_version: int, run_id: str,
                champion_version: int | None) -> StageResult:
    """Compare the new images of ``pixels`` version ``pixels_version`` with the training data of model
    ``champion_version`` (the champion the run started with; None: none yet, nothing to compare)."""
    cfg = settings.drift
    pixels = store.require_version("pixels", pixels_version)
    champion = store.get_model(champion_version) if champion_version is not None else None
    reference = store.get_version("pixels", champion["dataset_version"]) if champion else None
    if reference is None:
        why = "no champion yet" if champion is None else f"champion v{champion['version']}'s data is no longer stored"
        return _result([], 0, 0, champion, f"{why}: nothing to compare with")
    images = store.require_version("images", pixels["info"]["images_version"])
    known = {s["path"] for s in store.require_version("images", reference["info"]["images_version"])["shards"]}
    made_from = {images_shard_stem(s["path"]): s["path"] for s in pixels["shards"]}
    pairs = [(s["path"], made_from[PurePosixPath(s["path"]).stem]) for s in images["shards"]]
    sides = {"reference": [p for p in pairs if p[0] in known], "new": [p for p in pairs if p[0] not in known]}
    counts = {s["path"]: s["num_rows"] for s in images["shards"]}
    rows = {side: sum(counts[src] for src, _ in chosen) for side, chosen in sides.items()}
    if rows["new"] < cfg.min_images:
        return _result([], rows["reference"], rows["new"], champion,
                       f"{rows['new']} new images since champion v{champion['version']}'s data: "
                       f"fewer than drift.min_images ({cfg.min_images}), not checked")
    summary = _summaries(settings, store, pixels, sides, rows)
    ref, new = summary["reference"], summary["new"]
    quarantined = _quarantine_counts(store, images["version"], reference["info"]["images_version"])
    checks = [
        mix_check("label_mix", ref["labels"], new["labels"], cfg.label_mix, cfg.alpha),
        mix_check("size_mix", ref["sizes"], new["sizes"], cfg.size_mix, cfg.alpha),
        mix_check("missing_rate", {1: ref["missing"], 0: ref["n"] - ref["missing"]},
                  {1: new["missing"], 0: new["n"] - new["missing"]}, cfg.missing_rate, cfg.alpha),
        mix_check("quarantine_rate", {1: quarantined["reference"], 0: ref["n"]},
                  {1: quarantined["new"], 0: new["n"]}, cfg.quarantine_rate, cfg.alpha),
        shift_check("pixel_shift", ref, new, cfg.pixel_shift, cfg.alpha),
    ]
    if len(ref["sample"]) >= cfg.min_images:
        from fusion_core.ray_runtime import ensure_ray

        ray = ensure_ray(settings)
        task = ray.remote(model_checks).options(num_cpus=1)
        checks += ray.get(task.remote(champion["path"], ref["sample"], new["sample"], len(ref["labels"]), cfg,
                                      settings.train.seed))
    return _result(corrected(checks, cfg.alpha), ref["n"], new["n"], champion, None)


def _summaries(settings: Settings, store: Store, pixels: dict, sides: dict, rows: dict) -> dict:
    from fusion_core.ray_runtime import ensure_ray, gather

    ray = ensure_ray(settings)
    task = ray.remote(shard_summary)
    shape = tuple(pixels["info"]["shape"])
    shard_rows = {s["path"]: s["num_rows"] for s in pixels["shards"]}
    refs = {side: [task.remote(store.root, src, dst, shape,
                               -(-settings.drift.sample_size * shard_rows[dst] // max(rows[side], 1)),
                               side == "reference", settings.train.seed + i)
                   for i, (src, dst) in enumerate(pairs)] for side, pairs in sides.items()}
    out = {}
    for side, side_refs in refs.items():
        combined = combine(gather(side_refs, f"drift {side}"))
        keep = np.random.default_rng(settings.train.seed).permutation(len(combined["sample"]))
        out[side] = {**combined, "sample": combined["sample"][np.sort(keep[:settings.drift.sample_size])]}
    return out


def _quarantine_counts(store: Store, images_version: int, reference_version: int) -> dict:
    """Files quarantined by the runs that committed the reference images and by those that added the new ones."""
    runs = {"reference": set(), "new": set()}
    for v in store.list_versions("images"):
        if v["version"] <= images_version:
            runs["reference" if v["version"] <= reference_version else "new"].add(v["run_id"])
    return {side: store.count_quarantine(ids) for side, ids in runs.items()}


def _result(checks: list[dict], reference_n: int, new_n: int, champion: dict | None, note: str | None) -> StageResult:
    flagged = [c["check"] for c in checks if c["flagged"]]
    if flagged:
        log.warning("drift: %s", "; ".join(f"{c['check']} {c['value']} (threshold {c['threshold']}, "
                                            f"p={c['p_value']}, Holm-adjusted {c['p_adjusted']})"
                                            for c in checks if c["flagged"]))
    else:
        log.info("drift: %s", note or f"no drift in {len(checks)} checks")
    return StageResult("drift", counts={"reference_images": reference_n, "new_images": new_n,
                                        "flagged": len(flagged)},
                       metrics={c["check"]: c["value"] for c in checks},
                       outputs={"reference_model": champion["version"] if champion else None,
                                "checks": checks, "flagged": flagged, "note": note})
