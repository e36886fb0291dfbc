"""The model registry (fusion_core.registry): promotion and rollback policy, publishing on a real SQLite store.

No TensorFlow: the "model file" is a few bytes, which publishing copies without reading.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion_core.registry import (CLASSES_FILE, MODEL_FILE, promote_if_better, promotion_decision, publish_model,
                                  read_classes, register_model, rollback_version)
from fusion_core.store import Store

CLASSES = ["cat", "dog", "bird"]


def _model(version: int, accuracy: float, stage: str = "challenger") -> dict:
    return {"version": version, "stage": stage, "metrics": {"accuracy": accuracy}}


# promotion_decision ---------------------------------------------------------------------------

def test_first_model_is_promoted():
    assert promotion_decision(_model(1, 0.1), None, margin=0.5) == (True, "first model: promoted")


def test_challenger_that_beats_the_champion_by_the_margin_is_promoted():
    promote, reason = promotion_decision(_model(4, 0.9), _model(3, 0.7, "champion"), margin=0.1)
    assert promote is True
    assert "v3" in reason and "promoted" in reason


@pytest.mark.parametrize("challenger, champion, margin", [
    (0.7, 0.7, 0.0),     # a tie with no margin
    (0.75, 0.5, 0.25),   # exactly the margin (values exact in binary)
])
def test_equal_to_champion_plus_margin_is_promoted(challenger, champion, margin):
    assert promotion_decision(_model(2, challenger), _model(1, champion, "champion"), margin)[0] is True


@pytest.mark.parametrize("challenger, margin", [(0.72, 0.05), (0.69, 0.0)])
def test_below_the_margin_is_kept_as_challenger_and_says_why(challenger, margin):
    promote, reason = promotion_decision(_model(8, challenger), _model(7, 0.7, "champion"), margin)
    assert promote is False
    assert "v7" in reason and str(margin) in reason and "kept as challenger" in reason


# rollback_version -----------------------------------------------------------------------------

def test_rollback_is_the_newest_archived_version_older_than_the_champion():
    models = [_model(1, 0.5, "archived"), _model(2, 0.6, "challenger"), _model(3, 0.7, "archived"),
              _model(4, 0.8, "champion"), _model(5, 0.9, "archived")]  # v5: archived after a rollback to v4
    assert rollback_version(models, models[3]) == 3


def test_rollback_without_an_older_archived_version_is_none():
    models = [_model(1, 0.5, "challenger"), _model(2, 0.6, "champion"), _model(3, 0.7, "archived")]
    assert rollback_version(models, models[1]) is None
    assert rollback_version([], None) is None


def test_rollback_without_a_champion_is_the_newest_archived_version():
    models = [_model(1, 0.5, "archived"), _model(2, 0.6, "archived"), _model(3, 0.7, "challenger")]
    assert rollback_version(models, None) == 2


# publishing and registering on a real store ---------------------------------------------------

@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "store"))


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "work" / MODEL_FILE
    path.parent.mkdir()
    path.write_bytes(b"not really keras \x00\x01\x02" * 10)
    return path


def test_publish_copies_the_model_and_writes_its_classes(store, model_file):
    path = publish_model(store, str(model_file), CLASSES, "run-a")
    assert path == store.path("models", "run-a", MODEL_FILE)
    assert Path(path).read_bytes() == model_file.read_bytes()
    assert (Path(path).parent / CLASSES_FILE).is_file()
    assert read_classes(path) == CLASSES
    assert model_file.exists()  # a copy: the worker's file stays


def test_register_model_publishes_under_the_run_and_registers_a_challenger(store, model_file):
    row = register_model(store, str(model_file), CLASSES, run_id="run-b", name="seed_cnn", key="pixels:1:abc",
                         dataset_version=1, metrics={"accuracy": 0.5}, config={"epochs": 2})
    assert row["stage"] == "challenger" and row["version"] == 1
    assert (row["run_id"], row["name"], row["key"], row["dataset_version"]) == ("run-b", "seed_cnn", "pixels:1:abc", 1)
    assert row["metrics"] == {"accuracy": 0.5} and row["config"] == {"epochs": 2}
    assert row["path"] == store.path("models", "run-b", MODEL_FILE)
    assert Path(row["path"]).read_bytes() == model_file.read_bytes()
    assert read_classes(row["path"]) == CLASSES
    assert store.find_model("pixels:1:abc")["version"] == 1
    assert store.champion() is None  # registering does not promote


def test_promote_if_better_on_a_store(store, model_file):
    def register(run_id: str, accuracy: float) -> int:
        return register_model(store, str(model_file), CLASSES, run_id=run_id, name="seed_cnn", key=run_id,
                              dataset_version=1, metrics={"accuracy": accuracy}, config={})["version"]

    v1 = register("r1", 0.6)
    assert promote_if_better(store, v1, margin=0.1) == "first model: promoted"
    assert store.champion()["version"] == v1

    v2 = register("r2", 0.65)
    reason = promote_if_better(store, v2, margin=0.1)
    assert "does not beat champion v1 by 0.1" in reason
    assert store.champion()["version"] == v1 and store.get_model(v2)["stage"] == "challenger"

    v3 = register("r3", 0.8)
    assert promote_if_better(store, v3, margin=0.1) == "beats champion v1: promoted"
    assert {m["version"]: m["stage"] for m in store.list_models()} == {v1: "archived", v2: "challenger",
                                                                       v3: "champion"}
    assert rollback_version(store.list_models(), store.champion()) == v1
