"""The pure parts of fusion_core.stages.train: early stopping, input rows for one split, Ray Train run names.

fusion_core.stages.train imports TensorFlow and Ray only inside the functions that train (tests/test_light_imports.py
checks it), so these tests need neither.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fusion_core.learning.scoring import to_xy
from fusion_core.learning.train_loop import should_stop_early, train_run_name
from fusion_core.store.datasets import array_to_pixels, pixels_schema


def _history(val_accuracies) -> list[dict]:
    return [{"epoch": e, "val_accuracy": a} for e, a in enumerate(val_accuracies)]


# should_stop_early ----------------------------------------------------------------------------

@pytest.mark.parametrize("patience", [None, 0])
def test_no_patience_never_stops(patience):
    assert should_stop_early(_history([0.9] + [0.1] * 20), patience) is False
    assert should_stop_early([], patience) is False


@pytest.mark.parametrize("patience", [1, 2, 5])
def test_stops_exactly_when_the_best_epoch_is_patience_epochs_back(patience):
    history = _history([0.3, 0.5, 0.8])  # best: the last epoch so far
    for epochs_without_improvement in range(patience + 3):
        assert should_stop_early(history, patience) is (epochs_without_improvement >= patience)
        history.append({"epoch": len(history), "val_accuracy": 0.8 - 0.1 * (len(history) % 2)})  # ties or worse


def test_an_improvement_resets_the_count():
    assert should_stop_early(_history([0.5, 0.4, 0.4]), 2) is True
    assert should_stop_early(_history([0.5, 0.4, 0.6]), 2) is False
    assert should_stop_early(_history([0.5, 0.4, 0.6, 0.6, 0.6]), 2) is True  # an equal value is no improvement


def test_fewer_epochs_than_patience_never_stops():
    assert should_stop_early(_history([0.9, 0.1, 0.1]), 3) is False
    assert should_stop_early(_history([0.9, 0.1, 0.1, 0.1]), 3) is True


# to_xy -----------------------------------------------------------------------------------------

def _pixels_table(labels: list[str], splits: list[str]) -> tuple[pa.Table, np.ndarray]:
    n = len(labels)
    images = np.arange(n * 2 * 3 * 1, dtype=np.uint8).reshape(n, 2, 3, 1)
    table = pa.table({"image_id": [f"id{i}" for i in range(n)], "label": labels, "split": splits,
                      "pixels": array_to_pixels(images), "imputed_fraction": pa.array([0.0] * n, pa.float32()),
                      "impute_method": pa.array([None] * n, pa.string())}, schema=pixels_schema(2, 3, 1))
    return table, images


def test_to_xy_keeps_one_split_and_maps_labels_in_class_order():
    table, images = _pixels_table(["cat", "dog", "bird", "dog", "cat"], ["train", "val", "train", "train", "test"])
    classes = ["dog", "cat", "bird"]  # class order, not alphabetical
    out = to_xy(table, classes, (2, 3, 1), "train")
    assert out["x"].dtype == np.uint8 and out["x"].shape == (3, 2, 3, 1)
    np.testing.assert_array_equal(out["x"], images[[0, 2, 3]])
    assert out["y"].dtype == np.int64
    assert out["y"].tolist() == [1, 2, 0]
    val = to_xy(table, classes, (2, 3, 1), "val")
    np.testing.assert_array_equal(val["x"], images[[1]])
    assert val["y"].tolist() == [0]


def test_to_xy_leaves_out_unlabelled_images():
    table, images = _pixels_table(["cat", None, "dog"], ["train", "train", "train"])
    out = to_xy(table, ["cat", "dog"], (2, 3, 1), "train")
    np.testing.assert_array_equal(out["x"], images[[0, 2]])
    assert out["y"].tolist() == [0, 1]


def test_to_xy_of_an_empty_split():
    table, _ = _pixels_table(["cat", "dog"], ["train", "train"])
    out = to_xy(table, ["cat", "dog"], (2, 3, 1), "test")
    assert out["x"].shape == (0, 2, 3, 1) and out["y"].shape == (0,) and out["y"].dtype == np.int64


# train_run_name ------------------------------------------------------------------------------

def test_run_name_follows_the_key_unless_retraining_is_forced():
    key = "pixels:3:1a2b3c"
    name = train_run_name(key, "run-1", "on_new_data")
    assert name.startswith("train-") and name == train_run_name(key, "run-2", "on_new_data")
    assert name != train_run_name("pixels:4:1a2b3c", "run-1", "on_new_data")
    assert "run-1" not in name
    forced = [train_run_name(key, run, "always") for run in ("run-1", "run-2")]
    assert forced == ["train-run-1", "train-run-2"]


# train.retrain: on_drift ------------------------------------------------------------------------

def test_on_drift_keeps_the_champion_when_the_drift_check_flagged_nothing(tmp_path):
    """No Ray and no TensorFlow are started: the stage returns before training."""
    from fusion_core.config import load_settings
    from fusion_core.stages.train import train_model
    from fusion_core.store import Store
    from fusion_core.store.datasets import write_shard

    settings = load_settings("smoke", {"store.root": str(tmp_path / "store"), "train.retrain": "on_drift"})
    store = Store.from_settings(settings)
    table = pa.table({"image_id": ["a" * 64], "label": ["cat"], "split": ["train"],
                      "pixels": array_to_pixels(np.zeros((1, 2, 2, 1), np.uint8)),
                      "imputed_fraction": pa.array([0.0], pa.float32()), "impute_method": [None]},
                     schema=pixels_schema(2, 2, 1))
    pixels = store.commit_version("pixels", [write_shard(store.root, "datasets/pixels/a.parquet", table)], None,
                                  info={"shape": [2, 2, 1]})
    v = store.register_model("r0", "seed_cnn", "m.keras", "k", pixels, {"accuracy": 0.7, "macro_f1": 0.6, "n": 9}, {})
    store.set_champion(v, reason="test")
    kept = train_model(settings, store, pixels, "r1", v, drift_flags=[])
    assert kept.counts["trained"] == 0 and kept.outputs["model_version"] == v
    assert kept.outputs["promotion"] == "no drift flagged: champion kept, not retrained"
    assert len(store.list_models()) == 1


# the duplicate-aware holdout -----------------------------------------------------------------------

def test_holdout_near_copies_share_the_hash_and_the_colours_of_a_training_image(tmp_path):
    """A test image 4 grey levels brighter than a training image moves to training; the same checks in other
    colours (same perceptual hash) and a different image stay in the holdout. Two shards: copies are found
    across them."""
    from fusion_core.stages.train import holdout_copies
    from fusion_core.store import Store
    from fusion_core.store.datasets import write_shard

    yy, xx = np.mgrid[:16, :16]
    checks = ((yy // 2 + xx // 2) % 2).astype(bool)[:, :, None]
    original = np.where(checks, [200, 60, 30], [30, 30, 120]).astype(np.uint8)
    images = {"train": original, "copy": original + 4,
              "recoloured": np.where(checks, [60, 220, 60], [90, 60, 60]).astype(np.uint8),
              "other": np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)}
    store = Store(str(tmp_path / "store"))
    shards = []
    for i, names in enumerate((["train"], ["copy", "recoloured", "other"])):
        table = pa.table({"image_id": names, "label": ["a"] * len(names),
                          "split": ["train" if n == "train" else "test" for n in names],
                          "pixels": array_to_pixels(np.stack([images[n] for n in names])),
                          "imputed_fraction": pa.array([0.0] * len(names), pa.float32()),
                          "impute_method": [None] * len(names)}, schema=pixels_schema(16, 16, 3))
        shards.append(write_shard(store.root, f"datasets/pixels/{i}.parquet", table)["path"])
    assert holdout_copies(store, shards, (16, 16, 3), 0.03) == {"copy"}
    assert holdout_copies(store, shards, (16, 16, 3), 1.0) == {"copy", "recoloured"}
