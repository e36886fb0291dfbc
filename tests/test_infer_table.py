"""fusion_core.stages.infer.predictions_table on a hand-made Predictor batch; no model, no Ray, no TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_core.stages.infer import predictions_table
from fusion_core.store.datasets import fixed_list_to_array, predictions_schema

CLASSES = ["cat", "dog", "bird", "fish"]


def _batch() -> dict[str, np.ndarray]:
    probs = np.array([[0.1, 0.6, 0.2, 0.1],
                      [0.7, 0.05, 0.05, 0.2],
                      [0.25, 0.25, 0.25, 0.25],   # a four-way tie
                      [0.1, 0.4, 0.1, 0.4]],      # a tie for first place
                     dtype=np.float32)
    return {"image_id": np.array(["a", "b", "c", "d"], dtype=object),
            "label": np.array(["dog", "fish", None, "cat"], dtype=object),
            "split": np.array(["train", "test", "val", None], dtype=object),
            "probs": probs,
            "embedding": np.arange(4 * 5, dtype=np.float32).reshape(4, 5) / 7}


def test_predicted_class_confidence_and_top_k():
    batch = _batch()
    table = predictions_table(batch, CLASSES, top_k=3)
    rows = table.to_pylist()
    assert [r["image_id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["label"] for r in rows] == ["dog", "fish", None, "cat"]
    assert [r["split"] for r in rows] == ["train", "test", "val", None]
    assert [r["predicted"] for r in rows] == ["dog", "cat", "cat", "dog"]
    assert [r["top_k"] for r in rows] == [["dog", "bird", "cat"],
                                         ["cat", "fish", "dog"],
                                         ["cat", "dog", "bird"],   # ties keep class order
                                         ["dog", "fish", "cat"]]
    np.testing.assert_array_equal(table.column("confidence").to_numpy(), batch["probs"].max(axis=1))
    np.testing.assert_array_equal(fixed_list_to_array(table.column("probs")), batch["probs"])
    np.testing.assert_array_equal(fixed_list_to_array(table.column("embedding")), batch["embedding"])


@pytest.mark.parametrize("top_k, length", [(1, 1), (4, 4), (10, 4)])
def test_top_k_length_is_at_most_the_number_of_classes(top_k, length):
    table = predictions_table(_batch(), CLASSES, top_k=top_k)
    top = table.column("top_k").to_pylist()
    assert all(len(t) == length for t in top)
    assert [t[0] for t in top] == table.column("predicted").to_pylist()


def test_schema_is_the_predictions_schema():
    batch = _batch()
    table = predictions_table(batch, CLASSES, top_k=2)
    assert table.schema.equals(predictions_schema(4, 5), check_metadata=True)
    assert table.num_rows == 4
