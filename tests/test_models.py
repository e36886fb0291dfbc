"""The model zoo: every model builds for the data's shape, trains a step, and survives save and load."""

import numpy as np
import pytest

pytestmark = pytest.mark.tf


@pytest.mark.parametrize("name", ["seed_cnn", "resnet", "attention", "fast_cnn", "airbench"])
@pytest.mark.parametrize("recipe", ["seed", "best"])
def test_model_builds_trains_and_round_trips(name, recipe, tmp_path):
    from fusion_core.learning.model import build_model, embedding_model, load_model
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
    from fusion_core.learning.model import build_model

    model = build_model("seed_cnn", (32, 32, 3), 10)
    convs = [(lay.filters, lay.kernel_size) for lay in model.layers if lay.__class__.__name__ == "Conv2D"]
    assert convs == [(32, (3, 3)), (64, (3, 3)), (128, (3, 3))]
    assert model.count_params() == 361_034  # conv 32/64/128, dense 512, dense 10
    assert model.optimizer.__class__.__name__ == "Adam"


def test_warmup_cosine_schedule():
    from fusion_core.learning.model import WarmupCosine

    schedule = WarmupCosine(0.1, warmup_steps=10, total_steps=110)
    assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.05)
    assert float(schedule(10)) == pytest.approx(0.1) and float(schedule(60)) == pytest.approx(0.05)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_label_smoothing_loss():
    from fusion_core.learning.model import SparseCrossEntropy

    probs = np.array([[0.7, 0.2, 0.1]], dtype="float32")
    plain = float(SparseCrossEntropy()(np.array([0]), probs))
    smoothed = float(SparseCrossEntropy(0.3)(np.array([0]), probs))
    assert plain == pytest.approx(-np.log(0.7), rel=1e-5)
    assert smoothed == pytest.approx(-(0.8 * np.log(0.7) + 0.1 * np.log(0.2) + 0.1 * np.log(0.1)), rel=1e-5)


def test_precision_policy_follows_the_hardware(monkeypatch):
    import builtins
    import io

    from fusion_core.learning.train_loop import precision_policy

    real_open = builtins.open

    def cpuinfo(flags):
        return lambda path, *a, **k: io.StringIO(f"flags\t: fpu {flags}\n") if path == "/proc/cpuinfo" else real_open(path, *a, **k)

    assert precision_policy(False) == "float32"
    monkeypatch.setattr(builtins, "open", cpuinfo("avx2 avx512f avx512_bf16"))
    assert precision_policy(True) == "mixed_bfloat16"
    monkeypatch.setattr(builtins, "open", cpuinfo("avx2 fma"))
    assert precision_policy(True) == "float32"


def test_a_bfloat16_checkpoint_is_published_as_float32(tmp_path):
    import tf_keras

    from fusion_core.learning.model import build_model, load_model, published_model
    from fusion_core.recipes import RECIPES
    from fusion_core.stages.train import _float32_copy

    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        trained = build_model(RECIPES["best"].model, (16, 16, 3), 3, recipe=RECIPES["best"])
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    trained.save(tmp_path / "ckpt.keras", save_format="keras_v3")
    copy = _float32_copy(load_model(str(tmp_path / "ckpt.keras"), compile=False).get_weights(), RECIPES["best"],
                         (16, 16, 3), ["a", "b", "c"], None)
    assert {layer.compute_dtype for layer in copy.layers if layer.weights} == {"float32"}
    x = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3)).astype(np.float32)
    with_views = published_model(trained, RECIPES["best"])  # the best recipe publishes with test-time views
    np.testing.assert_allclose(copy.predict(x, verbose=0), with_views.predict(x, verbose=0), atol=0.05)
    assert load_model(str(tmp_path / "ckpt.keras")).get_layer("embedding").compute_dtype == "bfloat16"


def test_augmentation_shifts_and_flips_in_training_only():
    from fusion_core.learning.model import _augmentation

    x = np.random.default_rng(0).integers(1, 255, (16, 32, 32, 3)).astype(np.float32)
    augment = _augmentation((32, 32, 3))
    np.testing.assert_array_equal(augment(x, training=False).numpy(), x)  # no resize or padding at inference
    out = augment(x, training=True).numpy()
    assert out.shape == x.shape and (out != x).any(axis=(1, 2, 3)).mean() > 0.5
    assert ((out == 0).mean(axis=(1, 2, 3)) <= 0.25).all()  # zero fill from shifts of at most 4 pixels
