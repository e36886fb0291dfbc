"""Mining: what is wrong in a collection, from the embeddings and probabilities inference stored.

Plain functions over numpy arrays, one row per image:

- ``neighbours``: each image's nearest other images by cosine similarity (or Euclidean distance), from faiss
  (exact search; an HNSW graph above ``exact_max`` images).
- ``duplicate_sets``: nearest neighbours, images that share a perceptual hash or are each other's nearest
  thumbnails, kept where their embeddings are far closer than the collection's typical neighbours and their
  colour thumbnails agree, grouped into star-shaped sets; ``leaking_sets``: the sets that
  hold both training and holdout (val or test) images.
- ``uniqueness``: one minus the mean similarity to the nearest neighbours; the most unique are outliers.
- ``out_of_sample_probs`` and ``label_issues``: a k-fold logistic regression on the embeddings gives each labelled
  image probabilities from a model that never saw it; cleanlab's confident learning then flags likely label errors,
  with a quality score and the label the probabilities suggest.
- ``hardness`` (entropy of the model's probabilities) and ``mistakenness`` (the model's confidence that the given
  label is wrong).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The kinds of finding (rows of the ``findings`` table), and what ``fusion find`` calls them.
FINDINGS = {"duplicate": "duplicates", "leak": "leaks", "label_error": "label-errors", "outlier": "outliers",
            "quality": "quality"}


def normalised(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so that inner products are cosine similarities."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def neighbours(x: np.ndarray, k: int, exact_max: int = 200_000, cosine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of each row of ``x``: ``(scores, indices)``, each ``(n, k)``, nearest first;
    the scores are cosine similarities, or squared Euclidean distances with ``cosine=False``. Exact search up
    to ``exact_max`` rows, an HNSW graph (approximate) above."""
    import faiss

    x = normalised(x) if cosine else np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    k = min(k, n - 1)
    metric = faiss.METRIC_INNER_PRODUCT if cosine else faiss.METRIC_L2
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim) if cosine else faiss.IndexFlatL2(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, 32, metric)
        index.hnsw.efConstruction, index.hnsw.efSearch = 80, max(64, 2 * k)
    index.add(x)
    sims, idx = index.search(x, k + 1)
    return _without_self(sims, idx, k)


def _without_self(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's hits without the row itself (wherever ties put it; the last hit when the search missed it)."""
    own = idx == np.arange(len(idx))[:, None]
    own[~own.any(axis=1), -1] = True
    keep = ~own
    return sims[keep].reshape(len(idx), k), idx[keep].reshape(len(idx), k)


HASH_GROUP_MAX = 64  # a perceptual hash shared by more images is a pattern (stripes, checks), not a copy


def duplicate_sets(x: np.ndarray, sims: np.ndarray, idx: np.ndarray, threshold: float, ratio: float = 1.0,
                   hashes: np.ndarray | None = None, candidates: np.ndarray | None = None,
                   alike: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Each row's duplicate set (-1: none), sets numbered from 0 in the order they are formed.

    Candidate pairs: each row of embeddings ``x`` with its nearest neighbours (``sims``, ``idx`` from
    ``neighbours``), rows with the same perceptual hash (``hashes``; 0: none; shared by at most
    ``HASH_GROUP_MAX`` rows), and each row with each of its ``candidates`` (an ``(n, m)`` array of row
    indices, say its nearest thumbnails). A candidate pair is a near-duplicate when its embeddings' cosine
    similarity reaches ``threshold`` and their distance (one minus it) is at most ``ratio`` times the
    collection's typical distance to a row's last neighbour (the median over rows): a classifier's
    embeddings pull a whole class close together, so what counts as close is measured against the
    collection itself. With ``alike`` (say, whether colour thumbnails agree), the pair must also be
    ``alike(rows, cols)``. Sets are stars, not chains: the row with the most near-duplicates takes those not
    yet in a set into a new set, then the next, and so on, so a set never strings together images that are
    only alike through others.
    """
    n = len(x)
    rows, cols = np.repeat(np.arange(n), idx.shape[1]), idx.ravel()
    if hashes is not None:
        hash_rows, hash_cols = _same_hash_pairs(hashes)
        rows, cols = np.concatenate([rows, hash_rows]), np.concatenate([cols, hash_cols])
    if candidates is not None:
        rows = np.concatenate([rows, np.repeat(np.arange(n), candidates.shape[1])])
        cols = np.concatenate([cols, candidates.ravel()])
    unit = normalised(x)
    similarity = np.einsum("ij,ij->i", unit[rows], unit[cols])
    typical = float(np.median(1.0 - sims[:, -1])) if sims.size else 0.0
    kept = (similarity >= threshold) & (1.0 - similarity <= ratio * typical) & (rows != cols)
    if alike is not None and kept.any():
        kept[kept] = alike(rows[kept], cols[kept])
    return _stars(n, rows[kept], cols[kept])


def _same_hash_pairs(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows sharing a non-zero hash that at most ``HASH_GROUP_MAX`` rows share."""
    order = np.argsort(hashes, kind="stable")
    values, starts, counts = np.unique(hashes[order], return_index=True, return_counts=True)
    rows, cols = [], []
    for value, start, count in zip(values, starts, counts):
        if value != 0 and 1 < count <= HASH_GROUP_MAX:
            members = order[start:start + count]
            a, b = np.triu_indices(count, 1)
            rows.append(members[a])
            cols.append(members[b])
    empty = np.empty(0, np.int64)
    return (np.concatenate(rows), np.concatenate(cols)) if rows else (empty, empty)


def _stars(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Star-shaped sets over the pairs (``rows[i]``, ``cols[i]``) of ``n`` rows (see ``duplicate_sets``)."""
    rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])  # both ways
    pairs = np.unique(np.stack([rows, cols], axis=1), axis=0) if len(rows) else np.empty((0, 2), np.int64)
    starts = np.searchsorted(pairs[:, 0], np.arange(n + 1))
    degree = np.diff(starts)
    sets = np.full(n, -1, dtype=np.int64)
    found = 0
    for row in np.argsort(-degree, kind="stable")[:np.count_nonzero(degree)]:
        if sets[row] >= 0:
            continue
        members = pairs[starts[row]:starts[row + 1], 1]
        members = members[sets[members] < 0]
        if len(members):
            sets[row] = sets[members] = found
            found += 1
    return sets


def leaking_sets(sets: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """The ids of the duplicate sets that hold training images and holdout (val or test) images together."""
    member = sets >= 0
    train = np.unique(sets[member & (splits == "train")])
    held_out = np.unique(sets[member & np.isin(splits, ["val", "test"])])
    return np.intersect1d(train, held_out)


def uniqueness(sims: np.ndarray) -> np.ndarray:
    """One minus the mean cosine similarity to the nearest neighbours: 0 for an image among copies, higher for
    an image unlike any other."""
    return (1.0 - sims.mean(axis=1)).astype(np.float32)


def out_of_sample_probs(x: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Class probabilities for each row from a logistic regression fitted on the other folds' rows
    (``labels`` are class indices; classes with fewer rows than ``folds`` get fewer folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = np.bincount(labels).min()
    splits = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)
    model = LogisticRegression(max_iter=500, C=1.0)
    return cross_val_predict(model, normalised(x), labels, cv=splits, method="predict_proba")


def label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab's confident learning on out-of-sample ``probs``: ``(flagged, quality, suggested)`` per row;
    ``quality`` is the self-confidence of the given label (low: likely wrong), ``suggested`` the most
    probable class."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork of a multi-threaded process (a Ray
    # worker) can deadlock in the child.
    flagged = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return flagged, quality.astype(np.float32), probs.argmax(axis=1)


def hardness(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row's probabilities, scaled to [0, 1] by the entropy of a uniform guess."""
    p = np.clip(probs, 1e-12, 1.0)
    return (-(p * np.log(p)).sum(axis=1) / np.log(probs.shape[1])).astype(np.float32)


def mistakenness(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How sure the model is that the given label is wrong: one minus its probability."""
    return (1.0 - probs[np.arange(len(labels)), labels]).astype(np.float32)
