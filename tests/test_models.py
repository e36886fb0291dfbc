"""The model zoo: every model builds for the data's shape, trains a step, and survives save and load."""

import numpy as np
import pytest

pytestmark = pytest.mark.tf


@pytest.mark.parametrize("name", ["seed_cnn", "resnet", "attention"])
@pytest.mark.parametrize("recipe", ["seed", "best"])
def test_model_builds_trains_and_round_trips(name, recipe, tmp_path):
    from fusion_core.model import build_model, embedding_model, load_model
    from fusion_core.recipes import RECIPES

    model = build_model(name, (32, 32, 1), 7, recipe=RECIPES[recipe], steps_per_epoch=4)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 32, 32, 1)).astype("uint8"), rng.integers(0, 7, 16)
    loss = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    model.save(tmp_path / "m.keras", save_format="keras_v3")
    again = load_model(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    probs, embedding = embedding_model(again)(x[:2], training=False)
    assert probs.shape == (2, 7) and embedding.shape == (2, 512 if name == "seed_cnn" else 256)


def test_seed_cnn_is_exactly_the_seed_architecture():
    from fusion_core.model import build_model

    model = build_model("seed_cnn", (32, 32, 3), 10)
    convs = [(lay.filters, lay.kernel_size) for lay in model.layers if lay.__class__.__name__ == "Conv2D"]
    assert convs == [(32, (3, 3)), (64, (3, 3)), (128, (3, 3))]
    assert model.count_params() == 361_034  # conv 32/64/128, dense 512, dense 10
    assert model.optimizer.__class__.__name__ == "Adam"


def test_warmup_cosine_schedule():
    from fusion_core.model import WarmupCosine

    schedule = WarmupCosine(0.1, warmup_steps=10, total_steps=110)
    assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.05)
    assert float(schedule(10)) == pytest.approx(0.1) and float(schedule(60)) == pytest.approx(0.05)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_label_smoothing_loss():
    from fusion_core.model import SparseCrossEntropy

    probs = np.array([[0.7, 0.2, 0.1]], dtype="float32")
    plain = float(SparseCrossEntropy()(np.array([0]), probs))
    smoothed = float(SparseCrossEntropy(0.3)(np.array([0]), probs))
    assert plain == pytest.approx(-np.log(0.7), rel=1e-5)
    assert smoothed == pytest.approx(-(0.8 * np.log(0.7) + 0.1 * np.log(0.2) + 0.1 * np.log(0.1)), rel=1e-5)
