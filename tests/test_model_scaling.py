"""The model's first layer scales pixels to [0, 1] or standardizes them with the dataset's stats."""

import numpy as np
import pytest

pytestmark = pytest.mark.tf


def _scaling(model):
    from tf_keras import layers

    return next(lay for lay in model.layers if isinstance(lay, (layers.Normalization, layers.Rescaling)))


def test_first_layer_standardizes_with_dataset_stats_and_survives_save(tmp_path):
    from fusion_core.learning.model import build_model, load_model

    norm = {"mean": [100.0, 50.0, 200.0], "std": [10.0, 5.0, 20.0]}
    model = build_model("seed_cnn", (32, 32, 3), 4, norm=norm)
    x = np.zeros((1, 32, 32, 3), np.float32) + np.array([110.0, 40.0, 200.0], np.float32)
    np.testing.assert_allclose(_scaling(model)(x).numpy()[0, 0, 0], [1.0, -2.0, 0.0], atol=1e-5)
    model.save(tmp_path / "m.keras", save_format="keras_v3")
    np.testing.assert_allclose(load_model(str(tmp_path / "m.keras")).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)
    unit = build_model("seed_cnn", (32, 32, 3), 4)
    np.testing.assert_allclose(_scaling(unit)(x).numpy()[0, 0, 0], np.array([110.0, 40.0, 200.0]) / 255, atol=1e-6)
