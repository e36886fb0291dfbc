"""Classification metrics over label arrays (numpy only)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    return np.bincount(np.asarray(y_true) * n_classes + np.asarray(y_pred),
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1, per-class F1 and the confusion matrix.

    Classes absent from both truth and prediction do not count in the macro means.
    """
    cm = confusion_matrix(y_true, y_pred, len(classes)).astype(np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    present = (predicted + actual) > 0
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": {c: float(v) for c, v in zip(classes, f1)},
        "confusion_matrix": cm.astype(int).tolist(),
        "n": int(cm.sum()),
    }


def calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the mean gap between confidence and accuracy over equal-width
    confidence bins, weighted by the share of images in each bin."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
            for b in range(bins) if (which == b).any()]
    return float(sum(gaps))


def paired_test(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> dict:
    """McNemar's exact test of two models on the same images.

    Only the images exactly one model gets right count: ``challenger_only`` and ``champion_only``.
    ``p_value`` is one-sided: the chance of the challenger winning at least that many of them if both
    models were equally accurate.
    """
    from scipy.stats import binomtest

    challenger_correct, champion_correct = np.asarray(challenger_correct, bool), np.asarray(champion_correct, bool)
    wins = int(np.sum(challenger_correct & ~champion_correct))
    losses = int(np.sum(~challenger_correct & champion_correct))
    p_value = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    return {"challenger_only": wins, "champion_only": losses, "p_value": float(p_value)}
