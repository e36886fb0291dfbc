"""Model inputs from ``pixels`` shards, and models scored on a dataset's test split (the holdout).

Holdout rows are read one shard at a time; several models are scored in the same pass, so a
challenger and the champion are compared on exactly the same images. People's decisions (excluded images,
corrected labels) apply to every read of labelled rows that is given them. TensorFlow is needed only by
whoever built the models passed in.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusion_core.learning import registry
from fusion_core.learning.evaluate import calibration_error, classification_metrics, paired_test
from fusion_core.store import Store
from fusion_core.store.datasets import pixels_to_array, read_shard
from fusion_core.store.decisions import Decisions

NONE = Decisions()


def labelled_rows(batch: pa.Table, classes: list[str], split: str, decisions: Decisions = NONE) -> pa.Table:
    """Labelled rows of one split, decisions applied: their ``pixels`` column as stored and class indices ``y``.

    """
    batch = decisions.apply(batch) if decisions else batch
    batch = batch.filter(pc.and_(pc.equal(batch.column("split"), split), pc.is_valid(batch.column("label"))))
    index = {c: i for i, c in enumerate(classes)}
    return pa.table({"pixels": batch.column("pixels"),
                     "y": pa.array([index[v] for v in batch.column("label").to_pylist()], pa.int64())})


def to_xy(batch: pa.Table, classes: list[str], shape: tuple[int, int, int], split: str,
          decisions: Decisions = NONE) -> dict:
    """Labelled rows of one split as model inputs: uint8 pixels ``x`` and class indices ``y``."""
    return xy_arrays(labelled_rows(batch, classes, split, decisions), shape)


def xy_arrays(rows: pa.Table, shape: tuple[int, int, int]) -> dict:
    """``labelled_rows`` as arrays: uint8 images ``x`` (N, *shape) and labels ``y``."""
    return {"x": pixels_to_array(rows.column("pixels"), shape), "y": rows.column("y").to_numpy()}


def labelled_counts(store: Store, shards: list[str], splits: tuple[str, ...],
                    decisions: Decisions = NONE) -> dict[str, list[int]]:
    """Per split, each shard's count of labelled rows (those ``labelled_rows`` keeps), reading three columns
    of each shard once."""
    counts = {split: [] for split in splits}
    for shard in shards:
        rows = decisions.apply(read_shard(store.root, shard, columns=["image_id", "label", "split"]))
        rows = rows.filter(pc.is_valid(rows.column("label")))
        for split in splits:
            counts[split].append(pc.sum(pc.equal(rows.column("split"), split)).as_py() or 0)
    return counts


def labelled_share(root: str, shards: list[str], share: list[tuple[int, int, int]], classes: list[str],
                   split: str, decisions: Decisions = NONE) -> Iterator[pa.Table]:
    """A worker's share of the labelled rows of ``split`` (``feed.share_rows`` pieces over ``shards``), one
    piece at a time, as ``labelled_rows``."""
    for index, start, stop in share:
        rows = read_shard(root, shards[index], columns=["image_id", "pixels", "label", "split"])
        yield labelled_rows(rows, classes, split, decisions).slice(start, stop - start)


def training_sample(store: Store, shards: list[str], classes: list[str], shape: tuple[int, int, int],
                    decisions: Decisions = NONE, n: int = 5000, spread: int = 8) -> np.ndarray:
    """Up to ``n`` training images (uint8) taken evenly from up to ``spread`` shards across the dataset."""
    picked = [shards[round(i * (len(shards) - 1) / max(spread - 1, 1))] for i in range(min(spread, len(shards)))]
    images = []
    for shard in dict.fromkeys(picked):
        rows = read_shard(store.root, shard, columns=["image_id", "pixels", "label", "split"],
                          filters=[("split", "==", "train")])
        images.append(to_xy(rows, classes, shape, "train", decisions)["x"][:n // len(picked) + 1])
    return np.concatenate(images)[:n]


def labels_of(store: Store, shards: list[str]) -> list[str]:
    """Sorted distinct labels of a pixels dataset (reads only the label column)."""
    found = set()
    for shard in shards:
        found.update(pc.unique(read_shard(store.root, shard, columns=["label"]).column("label")).to_pylist())
    return sorted(v for v in found if v is not None)


def class_names(store: Store, shards: list[str]) -> list[str]:
    """The classes a model trained on a pixels dataset predicts: its labels, at least two."""
    names = labels_of(store, shards)
    if len(names) < 2:
        raise ValueError(f"train: need at least 2 labelled classes, found {names}")
    return names


def holdout_outputs(store: Store, models: list, shards: list[str], classes: list[str], shape: tuple[int, int, int],
                    decisions: Decisions = NONE) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels of the test split and each model's predicted probabilities for it, one shard at a time."""
    labels, probs = [], [[] for _ in models]
    for shard in shards:
        rows = read_shard(store.root, shard, columns=["image_id", "pixels", "label", "split"],
                          filters=[("split", "==", "test")])
        holdout = to_xy(rows, classes, shape, "test", decisions)
        if len(holdout["y"]):
            labels.append(holdout["y"])
            for out, model in zip(probs, models):
                out.append(model.predict(holdout["x"], batch_size=512, verbose=0))
    if not labels:
        raise ValueError("evaluate: the test split is empty; ingest more images or raise ingest.test_fraction")
    return np.concatenate(labels), [np.concatenate(p) for p in probs]


def holdout_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro and per-class figures, confusion matrix and calibration error of one model."""
    return {**classification_metrics(y, probs.argmax(axis=1), classes), "ece": calibration_error(y, probs)}


def evaluate_model(store: Store, model, shards: list[str], classes: list[str], shape: tuple[int, int, int],
                   decisions: Decisions = NONE) -> dict:
    """Holdout metrics of one model."""
    y, (probs,) = holdout_outputs(store, [model], shards, classes, shape, decisions)
    return holdout_metrics(y, probs, classes)


def mismatch(model_classes: list[str], model_shape, classes: list[str], shape) -> str | None:
    """Why a model cannot score pixels of ``shape`` labelled with ``classes``, or None when it can."""
    if tuple(model_shape) != tuple(shape):
        return f"it takes {'x'.join(map(str, model_shape))} images, these pixels are {'x'.join(map(str, shape))}"
    unknown = sorted(set(classes) - set(model_classes))
    if unknown:
        return f"it does not know the classes {', '.join(unknown)}"
    return None


def load_scorer(row: dict, classes: list[str], shape) -> tuple[object, str | None]:
    """A published model (catalog row) loaded to score pixels of ``shape`` labelled with exactly
    ``classes`` (in that order), and why it cannot (None when it can)."""
    model = registry.load_published(row["path"], compile=False)
    model_classes = registry.read_classes(row["path"])
    problem = mismatch(model_classes, model.input_shape[1:], classes, shape)
    if problem is None and model_classes != classes:
        problem = f"it was trained on the classes {', '.join(model_classes)}"
    return model, problem


def evaluate_against(store: Store, model, champion: dict | None, shards: list[str], classes: list[str],
                     shape: tuple[int, int, int], decisions: Decisions = NONE) -> dict:
    """Holdout metrics of ``model`` plus, under ``vs_champion``, the champion's on the same images.

    ``vs_champion`` holds the champion's version, accuracy, macro F1, per-class F1, the image count and
    McNemar's test (``evaluate.paired_test``); or ``incompatible`` with the reason it cannot score them.
    """
    if champion is None:
        return evaluate_model(store, model, shards, classes, shape, decisions)
    champion_model, problem = load_scorer(champion, classes, shape)
    if problem:
        return {**evaluate_model(store, model, shards, classes, shape, decisions),
                "vs_champion": {"version": champion["version"], "incompatible": problem}}
    y, (mine, theirs) = holdout_outputs(store, [model, champion_model], shards, classes, shape, decisions)
    ours, rival = holdout_metrics(y, mine, classes), holdout_metrics(y, theirs, classes)
    test = paired_test(mine.argmax(axis=1) == y, theirs.argmax(axis=1) == y)
    return {**ours, "vs_champion": {"version": champion["version"], "n": rival["n"], "accuracy": rival["accuracy"],
                                    "macro_f1": rival["macro_f1"], "per_class_f1": rival["per_class_f1"], **test}}


def compare_models(store: Store, a: dict, b: dict, pixels: dict) -> dict:
    """Models ``a`` and ``b`` (catalog rows) scored on the same holdout of ``pixels`` with the decisions in
    force: per-model metrics and McNemar's test of ``b`` against ``a``."""
    shards = [s["path"] for s in pixels["shards"]]
    shape, classes = tuple(pixels["info"]["shape"]), class_names(store, shards)
    loaded = []
    for row in (a, b):
        model, problem = load_scorer(row, classes, shape)
        if problem:
            raise ValueError(f"model v{row['version']} cannot score pixels v{pixels['version']}: {problem}")
        loaded.append(model)
    y, outputs = holdout_outputs(store, loaded, shards, classes, shape, store.decisions())
    scored = [holdout_metrics(y, p, classes) for p in outputs]
    return {"pixels_version": pixels["version"], "classes": classes, "a": scored[0], "b": scored[1],
            **paired_test(outputs[1].argmax(axis=1) == y, outputs[0].argmax(axis=1) == y)}


def comparison_rows(metrics: dict) -> list[dict]:
    """The challenger's holdout figures beside the champion's on the same images (empty without a champion
    that could be scored): accuracy, macro F1, then F1 per class."""
    vs = metrics.get("vs_champion") or {}
    if "accuracy" not in vs:
        return []
    rows = [{"metric": name, "challenger": metrics[name], "champion": vs[name]} for name in ("accuracy", "macro_f1")]
    rows += [{"metric": f"f1 {c}", "challenger": f1, "champion": vs["per_class_f1"].get(c)}
             for c, f1 in metrics["per_class_f1"].items()]
    return rows


def predict_with_embeddings(model, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and embeddings of images ``x`` from an ``embedding_model``, ``batch_size`` at a time."""
    outputs = [model(x[i:i + batch_size], training=False) for i in range(0, len(x), batch_size)]
    return (np.concatenate([np.asarray(o[0], dtype=np.float32) for o in outputs]),
            np.concatenate([np.asarray(o[1], dtype=np.float32) for o in outputs]))
