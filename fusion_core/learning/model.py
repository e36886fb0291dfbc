"""Keras models. Imports TensorFlow: keep out of light modules.

tf-keras (Keras 2) is used because Keras 3's ``model.fit`` fails under
``MultiWorkerMirroredStrategy`` (see docs/architecture.md, Training).
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _native_stderr_unless_verbose():
    """Send what native code writes to this process's stderr to /dev/null for a moment, unless FUSION_VERBOSE
    is set (``fusion -v``): TensorFlow's start-up lines (oneDNN, CUDA probing) come before its logging starts
    and ignore TF_CPP_MIN_LOG_LEVEL."""
    if os.environ.get("FUSION_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _native_stderr_unless_verbose():
    import tensorflow as tf

    tf.config.list_physical_devices()  # the CUDA probe, with its lines on a machine without a GPU

import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

from fusion_core.learning.airbench import EMBEDDING_LAYER, WHITENING_LAYER, airbench_logits, with_tta  # noqa: E402
from fusion_core.recipes import Recipe  # noqa: E402

MODELS = ("seed_cnn", "resnet", "attention", "fast_cnn", "airbench")


def build_model(name: str, input_shape: tuple[int, int, int], n_classes: int,
                learning_rate: float = 1e-3, norm: dict | None = None, recipe: Recipe | None = None,
                steps_per_epoch: int = 1) -> keras.Model:
    """Build a network by name and compile it for a recipe; its penultimate layer is named ``embedding``.

    Args:
        name: one of ``MODELS``.
        input_shape: (H, W, C) of the pixels dataset.
        n_classes: number of labels.
        learning_rate: the optimiser's (peak) learning rate.
        norm: ``{"mean": [...], "std": [...]}`` per channel in uint8 units to standardize the
            input; None scales it to [0, 1].
        recipe: optimiser, schedule and regularisation; default the seed recipe.
        steps_per_epoch: optimiser steps per epoch, for the learning-rate schedule.
    """
    recipe = recipe or Recipe(learning_rate=learning_rate)
    builders = {"seed_cnn": _seed_cnn, "resnet": _resnet, "attention": _attention, "fast_cnn": _fast_cnn}
    if name not in MODELS:
        raise ValueError(f"train.model: unknown model {name!r} (allowed: {', '.join(MODELS)})")
    inputs = keras.Input(shape=input_shape)
    x = _input_scaling(norm)(inputs)
    if recipe.augment:
        x = _augmentation(input_shape)(x)
    if name == "airbench":
        logits, _ = airbench_logits(x, n_classes, recipe)
        outputs = layers.Activation("softmax", dtype="float32", name="probs")(logits)
    else:
        features = builders[name](x)
        embedding = layers.Dense(512 if name == "seed_cnn" else 256, activation="relu", name=EMBEDDING_LAYER)(features)
        outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(embedding)
    model = keras.Model(inputs, outputs, name=name)
    # tf-keras' own sparse loss unless smoothing is asked for (it has no label_smoothing argument).
    loss = SparseCrossEntropy(recipe.label_smoothing) if recipe.label_smoothing else "sparse_categorical_crossentropy"
    model.compile(optimizer=_optimizer(recipe, learning_rate, steps_per_epoch), loss=loss, metrics=["accuracy"])
    return model


def _seed_cnn(x):
    """The seed network's feature extractor: three conv/pool stages, flattened."""
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    return layers.Flatten()(x)


def _conv_bn(x, filters: int, stride: int = 1, relu: bool = True):
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def _resnet(x):
    """A small residual network: stem, three stages of two basic blocks (32, 64, 128), global pooling."""
    x = _conv_bn(x, 32)
    for stage, filters in enumerate((32, 64, 128)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = _conv_bn(x, filters, stride)
            y = _conv_bn(y, filters, relu=False)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
                shortcut = layers.BatchNormalization()(shortcut)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    return layers.GlobalAveragePooling2D()(x)


def _fast_cnn(x):
    """Few FLOPs per accuracy point, after Keller Jordan's airbench: a 2x2 stem conv, then three stages
    (64, 128, 256 channels) of conv, 2x2 max pooling, batch norm and ReLU, then a second conv; global max
    pooling. Wide convs at low resolution keep CPUs and GPUs busy."""
    x = layers.ReLU()(layers.Conv2D(24, 2, padding="same")(x))
    for filters in (64, 128, 256):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = _conv_bn(x, filters)
    return layers.GlobalMaxPooling2D()(x)


def _attention(x):
    """A CNN whose 8x8 feature map goes through a multi-head self-attention block before pooling."""
    x = _conv_bn(x, 64)
    x = layers.MaxPooling2D(2)(_conv_bn(x, 64))
    x = layers.MaxPooling2D(2)(_conv_bn(x, 128))
    h, w, c = x.shape[1:]
    tokens = AddPositions()(layers.Reshape((h * w, c))(x))
    attended = layers.MultiHeadAttention(num_heads=4, key_dim=c // 4)(tokens, tokens)
    tokens = layers.LayerNormalization()(layers.Add()([tokens, attended]))
    mlp = layers.Dense(c, activation="relu")(layers.Dense(2 * c, activation="relu")(tokens))
    tokens = layers.LayerNormalization()(layers.Add()([tokens, mlp]))
    return layers.GlobalAveragePooling1D()(tokens)


@keras.saving.register_keras_serializable("fusion")
class AddPositions(layers.Layer):
    """Adds a learned embedding per token position to a (batch, tokens, channels) sequence."""

    def build(self, input_shape):
        self.positions = self.add_weight(name="positions", shape=tuple(input_shape[1:]), initializer="zeros")

    def call(self, tokens):
        return tokens + self.positions


@keras.saving.register_keras_serializable("fusion")
class SparseCrossEntropy(keras.losses.Loss):
    """Cross-entropy on integer labels with optional label smoothing (tf-keras' sparse loss has none)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        import tensorflow as tf

        onehot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), tf.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable("fusion")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to zero at ``total_steps``."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, max(total_steps, 1)

    def __call__(self, step):
        import math

        import tensorflow as tf

        step = tf.cast(step, tf.float32)
        warm = self.peak * step / max(self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0, 1)
        cosine = 0.5 * self.peak * (1 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable("fusion")
class Triangle(keras.optimizers.schedules.LearningRateSchedule):
    """airbench's schedule: from ``start`` x ``peak`` up to ``peak`` at ``peak_at`` of ``total_steps``, then
    linearly down to ``end`` x ``peak`` at the last step."""

    def __init__(self, peak: float, total_steps: int, start: float = 0.2, peak_at: float = 0.23, end: float = 0.07):
        self.peak, self.total_steps = peak, max(total_steps, 1)
        self.start, self.peak_at, self.end = start, peak_at, end

    def __call__(self, step):
        import tensorflow as tf

        step = tf.cast(step, tf.float32)
        top = max(int(self.peak_at * self.total_steps), 1)
        rising = self.start + (1 - self.start) * step / top
        falling = 1 + (self.end - 1) * (step - top) / max(self.total_steps - top, 1)
        return self.peak * tf.where(step < top, rising, tf.maximum(falling, self.end))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "start": self.start, "peak_at": self.peak_at,
                "end": self.end}


def _optimizer(recipe: Recipe, learning_rate: float, steps_per_epoch: int):
    rate = learning_rate
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "cosine":
        rate = WarmupCosine(learning_rate, int(recipe.warmup_epochs * steps_per_epoch), total)
    elif recipe.schedule == "triangle":
        rate = Triangle(learning_rate, total)
    decay = recipe.weight_decay or None
    if recipe.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=recipe.momentum, nesterov=True, weight_decay=decay)
    else:
        optimizer = keras.optimizers.Adam(rate, weight_decay=decay)
    if decay and recipe.model == "airbench" and recipe.whitening:
        optimizer.exclude_from_weight_decay(var_names=[WHITENING_LAYER])  # frozen filters; a bias that stops
    return optimizer


def _augmentation(input_shape: tuple[int, int, int]) -> keras.Sequential:
    """Shifts of up to 4 pixels with zero fill (pad-and-crop, per image) and horizontal flips; identity
    outside training. (Keras' RandomCrop would resize the padded image at inference.)"""
    h, w, _ = input_shape
    return keras.Sequential([layers.RandomTranslation(4 / h, 4 / w, fill_mode="constant", interpolation="nearest"),
                             layers.RandomFlip("horizontal")], name="augment")


def _input_scaling(norm: dict | None) -> layers.Layer:
    """The first layer: uint8 pixels to [0, 1], or standardized with the dataset's stats."""
    if norm is None:
        return layers.Rescaling(1.0 / 255)
    return layers.Normalization(mean=norm["mean"], variance=[s * s for s in norm["std"]])


def load_model(path: str, compile: bool = True) -> keras.Model:
    """A saved model; ``compile=False`` skips the optimizer (enough for predicting or copying weights)."""
    return keras.models.load_model(path, compile=compile)


def published_model(core: keras.Model, recipe: Recipe) -> keras.Model:
    """The model to register for a trained network: with the recipe's test-time augmentation."""
    return with_tta(core, recipe.tta) if recipe.model == "airbench" else core


def embedding_model(model: keras.Model) -> keras.Model:
    """A model returning (probabilities, penultimate embedding) for the same input."""
    return keras.Model(model.inputs, [model.output, model.get_layer(EMBEDDING_LAYER).output])
