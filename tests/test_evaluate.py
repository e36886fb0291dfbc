"""Tests for fusion_core.learning.evaluate against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_core.learning.evaluate import classification_metrics, confusion_matrix


def test_confusion_matrix_rows_true_cols_predicted():
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([1, 1, 1, 0]), 3)
    assert cm.tolist() == [[0, 2, 0], [0, 1, 0], [1, 0, 0]]


def test_classification_metrics_hand_example():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    # cm rows = truth: a -> (a, b), b -> (b, b), c -> (c, a)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-12)
    # precision = tp / predicted = [1/2, 2/3, 1/1]; recall = tp / actual = [1/2, 2/2, 1/2]
    assert m["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3, abs=1e-12)   # 13/18
    assert m["macro_recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3, abs=1e-12)      # 2/3
    # f1 = [1/2, 2*(2/3)/(5/3) = 4/5, 2*(1/2)/(3/2) = 2/3]
    assert m["per_class_f1"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 2 / 3}, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(59 / 90, abs=1e-12)
    assert set(m) == {"accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class_f1",
                      "confusion_matrix", "n"}
    assert all(type(m[k]) is float for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1"))
    assert type(m["n"]) is int


def test_absent_class_not_in_macro_means():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    with_absent = classification_metrics(y_true, y_pred, ["a", "b", "c", "unused"])
    assert with_absent["macro_f1"] == pytest.approx(59 / 90, abs=1e-12)
    assert with_absent["macro_precision"] == pytest.approx(13 / 18, abs=1e-12)
    assert with_absent["macro_recall"] == pytest.approx(2 / 3, abs=1e-12)
    assert with_absent["per_class_f1"]["unused"] == 0.0
    assert with_absent["confusion_matrix"][3] == [0, 0, 0, 0]


def test_class_only_predicted_counts_in_macro_means():
    # class 2 never occurs in the truth but is predicted once: precision 0, recall 0, counted
    m = classification_metrics(np.array([0, 1]), np.array([0, 2]), ["a", "b", "c"])
    assert m["accuracy"] == 0.5
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert m["macro_precision"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["macro_recall"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["per_class_f1"] == {"a": 1.0, "b": 0.0, "c": 0.0}


def test_perfect_predictions():
    y = np.array([2, 0, 1, 1])
    m = classification_metrics(y, y, ["a", "b", "c"])
    assert (m["accuracy"], m["macro_precision"], m["macro_recall"], m["macro_f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]


def test_empty_input():
    empty = np.array([], dtype=np.int64)
    m = classification_metrics(empty, empty, ["a", "b"])
    assert (m["accuracy"], m["macro_precision"], m["macro_recall"], m["macro_f1"], m["n"]) == (0.0, 0.0, 0.0, 0.0, 0)
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]


def test_calibration_error_hand_example():
    from fusion_core.learning.evaluate import calibration_error

    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    # bins of confidence 0.9 (right), 0.6 (wrong), 0.8 (right): gaps 0.1, 0.6, 0.2, a third each
    assert calibration_error(np.array([0, 1, 0]), probs) == pytest.approx(0.3)


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    from fusion_core.learning.evaluate import calibration_error

    probs = np.tile([0.75, 0.25], (4, 1))
    assert calibration_error(np.array([0, 0, 0, 1]), probs) == pytest.approx(0.0)
    assert calibration_error(np.array([1, 1, 1, 1]), probs) == pytest.approx(0.75)
