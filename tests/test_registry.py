"""The model registry (fusion_core.learning.registry): promotion and rollback policy, publishing on a real SQLite store.

No TensorFlow: the "model file" is a few bytes, which publishing copies without reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusion_core.learning.evaluate import paired_test
from fusion_core.learning.registry import (CLASSES_FILE, MODEL_FILE, promote_if_better, promotion_decision,
                                           publish_model, read_classes, register_model, rollback_version)
from fusion_core.store import Store

CLASSES = ["cat", "dog", "bird"]


def _model(version: int, accuracy: float, stage: str = "challenger") -> dict:
    return {"version": version, "stage": stage, "metrics": {"accuracy": accuracy}}


def _scored(version: int, challenger_correct: np.ndarray, champion: dict, champion_correct: np.ndarray) -> dict:
    """A challenger row whose holdout was also scored by ``champion`` (as ``scoring.evaluate_against`` stores it)."""
    vs = {"version": champion["version"], "n": len(champion_correct), "accuracy": float(champion_correct.mean()),
          **paired_test(challenger_correct, champion_correct)}
    return {"version": version, "stage": "challenger",
            "metrics": {"accuracy": float(challenger_correct.mean()), "vs_champion": vs}}


def _holdout(rng: np.random.Generator, n: int, accuracy: float) -> np.ndarray:
    """Which of ``n`` holdout images a model with true ``accuracy`` gets right (independent errors)."""
    return rng.random(n) < accuracy


CHAMPION = _model(1, 0.8, "champion")

# promotion_decision ---------------------------------------------------------------------------

def test_first_model_is_promoted():
    assert promotion_decision(_model(1, 0.1), None, margin=0.5, alpha=0.05) == (True, "first model: promoted")


def test_an_equally_good_challenger_with_a_lucky_small_holdout_is_not_promoted():
    """Both models are 80% accurate; on 300 images the challenger happens to score 2+ points higher, which
    the old rule (accuracy >= champion's + margin) promoted."""
    for seed in range(100):
        rng = np.random.default_rng(seed)
        challenger, champion = _holdout(rng, 300, 0.8), _holdout(rng, 300, 0.8)
        if challenger.mean() - champion.mean() >= 0.02:
            break
    assert challenger.mean() - champion.mean() >= 0.02
    promote, reason = promotion_decision(_scored(2, challenger, CHAMPION, champion), CHAMPION, margin=0.01,
                                         alpha=0.05)
    assert promote is False
    assert "not significant" in reason and "same 300 images" in reason and "kept as challenger" in reason


def test_a_clearly_better_challenger_is_promoted():
    rng = np.random.default_rng(0)
    truth = rng.random(2000)
    challenger, champion = truth < 0.9, truth < 0.8  # right on every image the champion gets, and more
    promote, reason = promotion_decision(_scored(2, challenger, CHAMPION, champion), CHAMPION, margin=0.01,
                                         alpha=0.05)
    assert promote is True and "v1" in reason and "promoted" in reason


def test_equal_models_are_promoted_at_most_about_alpha_of_the_time():
    rng = np.random.default_rng(1)
    promoted = sum(promotion_decision(_scored(2, _holdout(rng, 500, 0.8), CHAMPION, _holdout(rng, 500, 0.8)),
                                      CHAMPION, margin=0.0, alpha=0.05)[0] for _ in range(400))
    assert promoted / 400 <= 0.08


def test_a_gain_below_the_margin_is_kept_as_challenger_even_when_significant():
    truth = np.random.default_rng(2).random(20_000)
    promote, reason = promotion_decision(_scored(2, truth < 0.82, CHAMPION, truth < 0.8), CHAMPION, margin=0.05,
                                         alpha=0.05)
    assert promote is False and "below the margin 0.05" in reason


def test_a_challenger_compared_with_another_champion_is_not_promoted():
    truth = np.random.default_rng(3).random(1000)
    challenger = _scored(5, truth < 0.95, _model(3, 0.8, "archived"), truth < 0.5)
    promote, reason = promotion_decision(challenger, _model(4, 0.8, "champion"), margin=0.0, alpha=0.05)
    assert promote is False and "not scored against champion v4" in reason


def test_a_champion_that_cannot_score_the_holdout_is_replaced():
    challenger = {"version": 2, "metrics": {"accuracy": 0.5,
                                            "vs_champion": {"version": 1, "incompatible": "it takes 32x32x3 images"}}}
    promote, reason = promotion_decision(challenger, CHAMPION, margin=0.0, alpha=0.05)
    assert promote is True and "cannot score this holdout (it takes 32x32x3 images)" in reason


def test_paired_test_counts_only_the_images_one_model_gets_right():
    challenger = np.array([1, 1, 1, 0, 0, 1], bool)
    champion = np.array([1, 0, 0, 1, 0, 1], bool)
    result = paired_test(challenger, champion)
    assert (result["challenger_only"], result["champion_only"]) == (2, 1)
    assert result["p_value"] == pytest.approx(0.5)  # P(X >= 2), X ~ Binomial(3, 1/2)
    assert paired_test(champion, champion)["p_value"] == 1.0


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


def test_promote_if_better_on_a_store_records_each_promotion(store, model_file):
    def register(run_id: str, correct: np.ndarray, champion: dict | None) -> int:
        metrics = (_scored(0, correct, champion, _holdout(np.random.default_rng(9), len(correct), 0.7))["metrics"]
                   if champion else {"accuracy": float(correct.mean())})
        return register_model(store, str(model_file), CLASSES, run_id=run_id, name="seed_cnn", key=run_id,
                              dataset_version=1, metrics=metrics, config={})["version"]

    v1 = register("r1", np.ones(100, bool), None)
    assert promote_if_better(store, v1, margin=0.0, alpha=0.05) == "first model: promoted"
    assert store.champion()["version"] == v1

    v2 = register("r2", np.ones(500, bool), store.champion())
    blocked = promote_if_better(store, v2, margin=0.0, alpha=0.05, blocked="drift flagged (label_mix) blocks promotion")
    assert blocked.endswith("but drift flagged (label_mix) blocks promotion: kept as challenger")
    assert store.champion()["version"] == v1 and store.get_model(v2)["stage"] == "challenger"

    assert promote_if_better(store, v2, margin=0.0, alpha=0.05).endswith(": promoted")
    assert {m["version"]: m["stage"] for m in store.list_models()} == {v1: "archived", v2: "champion"}
    history = store.promotion_history()
    assert [(p["version"], p["previous"], p["actor"], p["forced"]) for p in history] == [
        (v1, None, "fusion", False), (v2, v1, "fusion", False)]
    assert "McNemar" in history[1]["reason"]
    assert rollback_version(store.list_models(), store.champion()) == v1
