"""Keras models. Imports TensorFlow: keep out of light modules.

tf-keras (Keras 2) is used because Keras 3's ``model.fit`` fails under
``MultiWorkerMirroredStrategy`` (see DESIGN.md, Training notes).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

EMBEDDING_LAYER = "embedding"


def build_model(name: str, input_shape: tuple[int, int, int], n_classes: int,
                learning_rate: float = 1e-3) -> keras.Model:
    """Build and compile a model by name; its penultimate layer is named ``embedding``.

    Args:
        name: ``seed_cnn``.
        input_shape: (H, W, C) of the pixels dataset.
        n_classes: number of labels.
    """
    if name != "seed_cnn":
        raise ValueError(f"train.model: unknown model {name!r} (allowed: seed_cnn)")
    model = keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Rescaling(1.0 / 255),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(512, activation="relu", name=EMBEDDING_LAYER),
        layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs"),
    ], name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def load_model(path: str) -> keras.Model:
    return keras.models.load_model(path)


def embedding_model(model: keras.Model) -> keras.Model:
    """A model returning (probabilities, penultimate embedding) for the same input."""
    return keras.Model(model.inputs, [model.output, model.get_layer(EMBEDDING_LAYER).output])
