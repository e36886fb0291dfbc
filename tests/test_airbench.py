"""The airbench network and its training parts: shapes, whitening from data, identity init, the
lookahead's weights being the ones published, and test-time augmentation."""

from dataclasses import replace

import numpy as np
import pytest

pytestmark = pytest.mark.tf


def _data(n=48, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8), rng.integers(0, 3, n)


def _model(recipe=None, size=16, steps=3):
    from fusion_core.learning.model import build_model
    from fusion_core.recipes import RECIPES

    recipe = recipe or RECIPES["best"]
    return build_model("airbench", (size, size, 3), 3, recipe.learning_rate, recipe=recipe, steps_per_epoch=steps)


def test_shapes_and_frozen_whitening_set_from_data():
    from fusion_core.learning.airbench import WHITENING_LAYER, set_whitening
    from fusion_core.learning.feed import whitening_filters

    model = _model(size=32)
    shapes = [layer.output_shape[1:] for layer in model.layers if layer.__class__.__name__ == "MaxPooling2D"]
    assert shapes == [(15, 15, 64), (7, 7, 256), (3, 3, 256)]  # 32 -> 31 (2x2 whitening) -> 15 -> 7 -> 3
    assert model.get_layer("embedding").output_shape == (None, 256) and model.output_shape == (None, 3)
    x, y = _data(size=32)
    filters = whitening_filters(x, None)
    set_whitening(model, filters)
    layer = model.get_layer(WHITENING_LAYER)
    trainable = [w.name for w in model.trainable_weights]
    assert layer.kernel.name not in trainable and layer.bias.name in trainable
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(layer.kernel.numpy(), filters)  # frozen through training


def test_images_too_small_for_airbench_are_refused():
    with pytest.raises(ValueError, match="at least 9x9"):
        _model(size=8)


def test_convolutions_start_as_identities():
    model = _model()
    conv = next(layer for layer in model.layers if layer.__class__.__name__ == "Conv2D")
    kernel = conv.kernel.numpy()  # (3, 3, 24, 64): the first 24 filters pass their channel through
    identity = np.zeros((3, 3, 24, 24))
    identity[1, 1, range(24), range(24)] = 1
    np.testing.assert_array_equal(kernel[..., :24], identity)
    assert np.abs(kernel[..., 24:]).max() > 0


def test_whitening_bias_learns_only_before_it_is_frozen():
    from fusion_core.learning.airbench import WHITENING_LAYER, FreezeWhiteningBias
    from fusion_core.recipes import RECIPES

    model = _model(replace(RECIPES["best"], weight_decay=0.0))
    x, y = _data()
    bias = model.get_layer(WHITENING_LAYER).bias
    freeze = FreezeWhiteningBias(1)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[freeze])
    after_first = bias.numpy().copy()
    assert np.abs(after_first).max() > 0
    model.fit(x, y, batch_size=16, epochs=3, initial_epoch=1, verbose=0, callbacks=[freeze])
    layer = model.get_layer(WHITENING_LAYER)
    np.testing.assert_array_equal(layer.frozen_bias.numpy(), after_first)
    blank = layer(np.zeros((1, 4, 4, 3), np.float32)).numpy()  # the conv adds nothing: the output is the bias
    np.testing.assert_allclose(blank[0, 0, 0], after_first, atol=1e-6)


def test_lookahead_weights_are_the_ones_published(tmp_path):
    from fusion_core.learning.airbench import Lookahead
    from fusion_core.learning.model import load_model, published_model
    from fusion_core.recipes import RECIPES

    recipe = RECIPES["best"]
    model = _model(recipe)
    x, y = _data()
    lookahead = Lookahead(total_steps=9, start_epoch=1, every=1)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[lookahead])
    assert lookahead.average is None  # not started in epoch 0
    model.fit(x, y, batch_size=16, epochs=3, initial_epoch=1, verbose=0, callbacks=[lookahead])
    variables = lookahead._variables()
    assert any("moving_mean" in v.name for v in variables)  # batch-norm statistics are averaged too
    for variable, average in zip(variables, lookahead.average):
        np.testing.assert_array_equal(variable.numpy(), average)
    # the checkpoint saved at the epoch's end, published with test-time augmentation, holds the average
    model.save(tmp_path / "ckpt.keras", save_format="keras_v3")
    published = published_model(load_model(str(tmp_path / "ckpt.keras"), compile=False), recipe)
    for variable, average in zip([w for w in published.weights if w.trainable or "moving_" in w.name],
                                 lookahead.average):
        np.testing.assert_array_equal(variable.numpy(), average)


def test_lookahead_averages_with_airbenchs_decay():
    from fusion_core.learning.airbench import Lookahead

    lookahead = Lookahead(total_steps=100, start_epoch=0, every=5)
    rho = 0.95 ** 5 * (50 / 100) ** 3
    assert rho == pytest.approx(0.0967, abs=1e-4)  # the average moves fast early in training ...
    assert 0.95 ** 5 * 1.0 ** 3 == pytest.approx(0.7738, abs=1e-4)  # ... and averages strongly at the end
    assert lookahead.every == 5 and lookahead.decay_base == 0.95 and lookahead.power == 3.0


def test_test_time_augmentation_averages_the_views():
    import tensorflow as tf
    import tf_keras

    from fusion_core.learning.airbench import tta_views
    from fusion_core.learning.model import embedding_model, published_model
    from fusion_core.recipes import RECIPES

    core = _model()
    x, y = _data(8)
    core.fit(x, y, batch_size=8, epochs=1, verbose=0)  # batch-norm statistics away from their start
    views_net = tf_keras.Model(core.input, [core.get_layer("logits").output, core.get_layer("embedding").output])
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    views = {(None, False): x, (None, True): x[:, :, ::-1],
             ((1, 1), False): padded[:, :16, :16], ((1, 1), True): padded[:, :16, :16][:, :, ::-1],
             ((-1, -1), False): padded[:, 2:, 2:], ((-1, -1), True): padded[:, 2:, 2:][:, :, ::-1]}
    logits, embeddings = 0, 0
    assert sum(w for _, _, w in tta_views(2)) == pytest.approx(1.0) and len(tta_views(2)) == 6
    for shift, mirrored, weight in tta_views(2):
        view_logits, view_embedding = views_net.predict(views[(shift, mirrored)].astype(np.float32), verbose=0)
        logits, embeddings = logits + weight * view_logits, embeddings + weight * view_embedding
    tta = published_model(core, RECIPES["best"])
    np.testing.assert_allclose(tta.predict(x, verbose=0), tf.nn.softmax(logits).numpy(), atol=1e-5)
    probs, embedding = embedding_model(tta)(x, training=False)
    np.testing.assert_allclose(embedding.numpy(), embeddings, atol=1e-4)
    mirror_only = published_model(core, replace(RECIPES["best"], tta=1))
    half = 0.5 * views_net.predict(x.astype(np.float32), verbose=0)[0] + 0.5 * views_net.predict(
        x[:, :, ::-1].astype(np.float32), verbose=0)[0]
    np.testing.assert_allclose(mirror_only.predict(x, verbose=0), tf.nn.softmax(half).numpy(), atol=1e-5)
    assert published_model(core, replace(RECIPES["best"], tta=0)) is core


def test_triangle_schedule():
    from fusion_core.learning.model import Triangle

    schedule = Triangle(1.5, total_steps=100)
    assert float(schedule(0)) == pytest.approx(0.3)  # 0.2 x peak
    assert float(schedule(23)) == pytest.approx(1.5)  # the peak at 23% of the steps
    assert float(schedule(100)) == pytest.approx(0.105)  # 0.07 x peak at the end
    assert float(schedule(10)) < float(schedule(20)) and float(schedule(50)) > float(schedule(80))
