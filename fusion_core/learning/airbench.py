"""Fusion's Keras implementation of the airbench94 method (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds
on a single GPU", arXiv 2404.00498): its network, its lookahead, and test-time augmentation.

The recipe's other parts live where every recipe's do: the optimizer and the triangular schedule in
``fusion_core.learning.model``, flips and shifts in ``fusion_core.learning.feed``, the patch-whitening filters computed
from training images in ``fusion_core.learning.feed.whitening_filters``. Imports TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tf_keras as keras
from tf_keras import layers

from fusion_core.recipes import Recipe

EMBEDDING_LAYER = "embedding"
WHITENING_LAYER = "whitening"
BLOCK_WIDTHS = (64, 256, 256)
LOGIT_SCALE = 1 / 9  # airbench's output scaling
MIN_SIZE = 9  # three 2x2 poolings after the 2x2 whitening conv need at least this many pixels


def airbench_logits(x, n_classes: int, recipe: Recipe):
    """The airbench94 network on scaled inputs ``x``: (logits, embedding) tensors.

    A 2x2 whitening conv (frozen filters set from the data, see ``Whitening``) and GELU; three blocks of
    conv, 2x2 max pooling, batch norm, GELU, conv, batch norm, GELU (64, 256, 256 channels); global max
    pooling (the embedding) and a bias-free linear layer scaled by 1/9. Batch norm has no scale, momentum
    0.6 (PyTorch's 0.4) and epsilon 1e-12, and its bias learns at ``recipe.bias_lr_scale`` times the rate;
    convolutions start as identities (``Dirac``). ``recipe.whitening``, ``dirac`` and ``airbench_bn`` turn
    those parts off for the ablation.
    """
    size = min(x.shape[1], x.shape[2])
    if size < MIN_SIZE:
        raise ValueError(f"train.model: airbench needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels "
                         f"(preprocess.size), got {x.shape[1]}x{x.shape[2]}")
    channels = x.shape[-1]
    width = 2 * channels * 4
    if recipe.whitening:
        x = Whitening(width, name=WHITENING_LAYER)(x)
    else:
        x = layers.Conv2D(width, 2, name=WHITENING_LAYER)(x)
    x = layers.Activation("gelu")(x)
    for filters in BLOCK_WIDTHS:
        x = _conv(x, filters, recipe)
        x = layers.MaxPooling2D(2)(x)
        x = _norm(x, recipe)
        x = _conv(x, filters, recipe)
        x = _norm(x, recipe)
    embedding = layers.GlobalMaxPooling2D(name=EMBEDDING_LAYER)(x)
    logits = layers.Dense(n_classes, use_bias=False, kernel_initializer=_torch_uniform())(embedding)
    return layers.Rescaling(LOGIT_SCALE, name="logits")(logits), embedding


def _torch_uniform():
    """PyTorch's default weight initialisation: uniform within 1/sqrt(fan_in)."""
    return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")


def _conv(x, filters: int, recipe: Recipe):
    init = Dirac() if recipe.dirac else _torch_uniform()
    return layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init)(x)


def _norm(x, recipe: Recipe):
    if recipe.airbench_bn:
        x = layers.BatchNormalization(momentum=0.6, epsilon=1e-12, center=False, scale=False)(x)
        x = ScaledBias(recipe.bias_lr_scale)(x)
    else:
        x = layers.BatchNormalization()(x)
    return layers.Activation("gelu")(x)


@keras.saving.register_keras_serializable("fusion")
class Dirac(keras.initializers.VarianceScaling):
    """PyTorch's default conv initialisation, with the first ``in_channels`` filters set to identities
    (an implicit residual connection at the start of training)."""

    def __init__(self, seed=None):
        super().__init__(1 / 3, "fan_in", "uniform", seed=seed)

    def __call__(self, shape, dtype=None, **kwargs):
        weights = super().__call__(shape, dtype=dtype, **kwargs)
        rows, cols, cin, cout = shape
        k = min(cin, cout)
        identity = np.zeros(shape, np.float32)
        identity[rows // 2, cols // 2, np.arange(k), np.arange(k)] = 1.0
        keep = np.ones(shape, np.float32)
        keep[..., :k] = 0.0
        return weights * keep + identity

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable("fusion")
class Whitening(layers.Layer):
    """A 2x2 'valid' conv whose filters are fixed (set from the training data's patches before training,
    ``fusion_core.learning.feed.whitening_filters``) and whose bias learns until ``freeze_bias``."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(2, 2, input_shape[-1], self.filters), trainable=False,
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        # After the freeze the layer adds this copy, so the optimizer's momentum cannot move it any more.
        self.frozen_bias = self.add_weight(name="frozen_bias", shape=(self.filters,), trainable=False,
                                           initializer="zeros")
        self.learning = self.add_weight(name="learning", shape=(), trainable=False, initializer="ones")

    def freeze_bias(self) -> None:
        if self.learning.numpy() == 1.0:
            self.frozen_bias.assign(self.bias.numpy())
            self.learning.assign(0.0)

    def call(self, x):
        import tensorflow as tf

        gate = tf.cast(self.learning, self.bias.dtype)
        return tf.nn.conv2d(x, self.kernel, 1, "VALID") + gate * self.bias + (1 - gate) * self.frozen_bias

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable("fusion")
class ScaledBias(layers.Layer):
    """Adds a per-channel bias that learns ``lr_scale`` times faster than the other weights under SGD:
    the bias is ``sqrt(lr_scale) * v`` for a variable ``v``, which scales v's gradient by sqrt(lr_scale)
    and the bias's step by lr_scale, while decoupled weight decay shrinks both by the same fraction."""

    def __init__(self, lr_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.lr_scale = lr_scale

    def build(self, input_shape):
        self.v = self.add_weight(name="bias", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x + float(np.sqrt(self.lr_scale)) * self.v

    def get_config(self):
        return {**super().get_config(), "lr_scale": self.lr_scale}


@keras.saving.register_keras_serializable("fusion")
class Shift(layers.Layer):
    """Moves the image content by ``dy``, ``dx`` pixels (at most 1), edges filled by reflection."""

    def __init__(self, dy: int, dx: int, **kwargs):
        super().__init__(**kwargs)
        self.dy, self.dx = dy, dx

    def call(self, x):
        import tensorflow as tf

        h, w = tf.shape(x)[1], tf.shape(x)[2]
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        return padded[:, 1 - self.dy:1 - self.dy + h, 1 - self.dx:1 - self.dx + w]

    def get_config(self):
        return {**super().get_config(), "dy": self.dy, "dx": self.dx}


@keras.saving.register_keras_serializable("fusion")
class Mirror(layers.Layer):
    """Mirrors images left to right."""

    def call(self, x):
        return x[:, :, ::-1]


@keras.saving.register_keras_serializable("fusion")
class WeightedSum(layers.Layer):
    """sum_i weights[i] * inputs[i]."""

    def __init__(self, view_weights: list[float], **kwargs):
        super().__init__(**kwargs)
        self.view_weights = list(view_weights)

    def call(self, inputs):
        return sum(w * x for w, x in zip(self.view_weights, inputs))

    def get_config(self):
        return {**super().get_config(), "view_weights": self.view_weights}


@keras.saving.register_keras_serializable("fusion")
class Softmax(layers.Layer):
    """Softmax of its first input. The second, the averaged embedding, is an input only so that the
    embedding layer stays in the model for ``fusion_core.learning.model.embedding_model``."""

    def call(self, inputs):
        import tensorflow as tf

        return tf.nn.softmax(tf.cast(inputs[0], self.compute_dtype))


def tta_views(level: int) -> list[tuple[tuple[int, int] | None, bool, float]]:
    """airbench's test-time views as (shift or None, mirrored, weight): level 1 the image and its mirror;
    level 2 also both shifted one pixel up-left and down-right (half the weight, split four ways)."""
    views = [(None, False, 0.5), (None, True, 0.5)]
    if level >= 2:
        views = [(s, m, w / 2) for s, m, w in views]
        views += [(shift, mirrored, 0.125) for shift in ((1, 1), (-1, -1)) for mirrored in (False, True)]
    return views if level >= 1 else [(None, False, 1.0)]


def with_tta(core: keras.Model, level: int) -> keras.Model:
    """``core`` predicting from the weighted views of ``tta_views(level)``: logits and embeddings are
    averaged over the views. Shares ``core``'s weights; level 0 returns ``core`` itself."""
    if level == 0:
        return core
    inner = keras.Model(core.input, [core.get_layer("logits").output, core.get_layer(EMBEDDING_LAYER).output],
                        name=f"{core.name}_view")
    inputs = keras.Input(core.input_shape[1:])
    logits, embeddings, weights = [], [], []
    for shift, mirrored, weight in tta_views(level):
        view = Shift(*shift)(inputs) if shift else inputs
        view = Mirror()(view) if mirrored else view
        out = inner(view)
        logits.append(out[0])
        embeddings.append(out[1])
        weights.append(weight)
    embedding = WeightedSum(weights, name=EMBEDDING_LAYER)(embeddings)
    probs = Softmax(dtype="float32", name="probs")([WeightedSum(weights, name="tta_logits")(logits), embedding])
    return keras.Model(inputs, probs, name=core.name)


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: from ``start_epoch``, every ``every`` steps the weights (and batch-norm
    statistics) become an exponential moving average of themselves, with a decay that grows over training
    (``decay_base ** every * (step / total_steps) ** power``); at each epoch's end the weights are the average."""

    def __init__(self, total_steps: int, start_epoch: int, every: int = 5, decay_base: float = 0.95,
                 power: float = 3.0):
        super().__init__()
        self.total_steps, self.start_epoch, self.every = max(total_steps, 1), start_epoch, every
        self.decay_base, self.power = decay_base, power
        self.epoch, self.average = 0, None

    def _variables(self):
        return [w for w in self.model.weights if w.trainable or "moving_" in w.name]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.epoch < self.start_epoch or step % self.every:
            return
        values = [w.numpy() for w in self._variables()]
        if self.average is None:
            self.average = values
            return
        rho = self.decay_base ** self.every * min(step / self.total_steps, 1.0) ** self.power
        self.average = [rho * a + (1 - rho) * v for a, v in zip(self.average, values)]
        self._publish()

    def on_epoch_end(self, epoch, logs=None):
        if self.average is not None:
            self._publish()

    def _publish(self):
        for variable, value in zip(self._variables(), self.average):
            variable.assign(value)


class FreezeWhiteningBias(keras.callbacks.Callback):
    """Trains the whitening layer's bias for the first ``epochs`` epochs only."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        for layer in self.model.layers:
            if isinstance(layer, Whitening) and epoch >= self.epochs:
                layer.freeze_bias()


def set_whitening(model: keras.Model, filters: np.ndarray) -> None:
    """Put the data's whitening filters into ``model``'s whitening layer (if it has a frozen one)."""
    layer = model.get_layer(WHITENING_LAYER)
    if isinstance(layer, Whitening):
        layer.kernel.assign(filters)
