"""Mining: what is wrong in a collection, from the embeddings and probabilities inference stored.

Plain functions over numpy arrays, one row per image:

- ``neighbours``: each image's nearest other images by cosine similarity, from faiss (exact inner-product
  search on L2-normalised embeddings; an HNSW graph above ``exact_max`` images).
- ``duplicate_sets``: images joined when their similarity reaches a threshold, or when they share a perceptual
  hash, grouped into sets (connected components); ``leaking_sets``: the sets that hold both training and holdout (val or test) images.
- ``uniqueness``: one minus the mean similarity to the nearest neighbours; the most unique are outliers.
- ``out_of_sample_probs`` and ``label_issues``: a k-fold logistic regression on the embeddings gives each labelled
  image probabilities from a model that never saw it; cleanlab's confident learning then flags likely label errors,
  with a quality score and the label the probabilities suggest.
- ``hardness`` (entropy of the model's probabilities) and ``mistakenness`` (the model's confidence that the given
  label is wrong).
"""

from __future__ import annotations

import numpy as np

# The kinds of finding (rows of the ``findings`` table), and what ``fusion find`` calls them.
FINDINGS = {"duplicate": "duplicates", "leak": "leaks", "label_error": "label-errors", "outlier": "outliers",
            "quality": "quality"}


def normalised(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so that inner products are cosine similarities."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def neighbours(x: np.ndarray, k: int, exact_max: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar other rows of each row of ``x``: ``(similarities, indices)``, each ``(n, k)``,
    most similar first. Exact search up to ``exact_max`` rows, an HNSW graph (approximate) above."""
    import faiss

    x = normalised(x)
    n, dim = x.shape
    k = min(k, n - 1)
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
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


def duplicate_sets(sims: np.ndarray, idx: np.ndarray, threshold: float, hashes: np.ndarray | None = None) -> np.ndarray:
    """Each row's duplicate set (-1: none): rows joined wherever a neighbour's similarity reaches ``threshold``,
    and rows with the same perceptual hash (``hashes``; 0: none), sets numbered from 0 by their first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(sims)
    rows, cols = np.nonzero(sims >= threshold)
    rows, cols = rows, idx[rows, cols]
    if hashes is not None:  # each row joined to the one before it with the same hash
        order = np.argsort(hashes, kind="stable")
        same = (hashes[order][1:] == hashes[order][:-1]) & (hashes[order][1:] != 0)
        rows, cols = np.concatenate([rows, order[1:][same]]), np.concatenate([cols, order[:-1][same]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    in_set = sizes[component] > 1
    sets = np.full(n, -1, dtype=np.int64)
    _, first = np.unique(component[in_set], return_inverse=True)
    sets[in_set] = first
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
