"""Named training recipes: optimiser, schedule, regularisation and augmentation (no TensorFlow here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class Recipe:
    """How to train: everything but the data and the network's shape.

    ``batch_size`` and ``learning_rate`` are per worker when ``scale_with_workers``:
    N workers then train with a global batch of N x batch_size at N x learning_rate
    (the linear scaling rule); otherwise the global batch is split across workers.
    """

    model: str = "seed_cnn"
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9  # SGD's (Nesterov)
    schedule: Literal["constant", "cosine", "triangle"] = "constant"
    warmup_epochs: float = 0.0  # cosine only
    weight_decay: float = 0.0  # decoupled: each step shrinks the weights by rate x weight_decay
    label_smoothing: float = 0.0
    augment: bool = False  # in the model: random shifts of up to 4 pixels and random flips
    translate: int = 0  # in the feed: random shifts of up to this many pixels, edges reflected
    flip: Literal["none", "random", "alternating"] = "none"  # in the feed (fusion_core.learning.feed.flip_mask)
    epochs: int = 10
    batch_size: int = 64
    early_stopping_patience: int | None = None
    scale_with_workers: bool = False
    bias_lr_scale: float = 1.0  # batch-norm biases learn this many times faster (airbench)
    ema: bool = False  # airbench's lookahead from 30% of the epochs (fusion_core.learning.airbench.Lookahead)
    tta: int = 0  # test-time views averaged by the published model: 0 none, 1 mirror, 2 mirror + shifts
    # airbench's network only (fusion_core.learning.airbench); off switches for the ablation
    whitening: bool = True  # a frozen patch-whitening first layer set from the data (else a learned conv)
    dirac: bool = True  # convolutions start as identities
    airbench_bn: bool = True  # batch norm without scale, momentum 0.6, epsilon 1e-12 (else Keras' defaults)

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    # The seed's own recipe: Adam, batch 64, 10 epochs, no augmentation.
    "seed": Recipe(),
    # airbench94 (arXiv 2404.00498), its hyperparameters in Keras' terms: a mean loss over batches of 1024
    # at rate 1.5 = 11.5 per 1024 images / (1 + 1 / (1 - 0.85)); its weight decay 0.0153 per 1024 images,
    # which PyTorch's SGD passes through the momentum (x 1 / (1 - 0.85)), as a decoupled decay per unit of
    # rate: 0.0153 / 7.667 / 0.15 / 1.5 = 0.00887. Triangular schedule, label smoothing 0.2, alternating
    # flips and 2-pixel shifts, batch-norm biases at 64x the rate, lookahead, 6-view test-time augmentation.
    # 10 epochs (airbench: 9.9).
    "best": Recipe(model="airbench", optimizer="sgd", learning_rate=1.5, momentum=0.85, schedule="triangle",
                   weight_decay=0.00887, label_smoothing=0.2, translate=2, flip="alternating", epochs=10,
                   batch_size=1024, scale_with_workers=True, bias_lr_scale=64.0, ema=True, tta=2),
    # The previous best: fast_cnn with in-model shifts and flips, warmup-cosine SGD, early stopping.
    "fast": Recipe(model="fast_cnn", optimizer="sgd", learning_rate=0.2, schedule="cosine", warmup_epochs=1.0,
                   weight_decay=5e-4, label_smoothing=0.1, augment=True, epochs=30, batch_size=256,
                   early_stopping_patience=6, scale_with_workers=True),
}


def resolve_recipe(name: str, **overrides) -> Recipe:
    """The named recipe with explicit settings (those not None) taking precedence."""
    if name not in RECIPES:
        raise ValueError(f"train.recipe: unknown recipe {name!r} (allowed: {', '.join(RECIPES)})")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
