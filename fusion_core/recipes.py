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
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = False
    epochs: int = 10
    batch_size: int = 64
    early_stopping_patience: int | None = None
    scale_with_workers: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    # The seed's own recipe: Adam, batch 64, 10 epochs, no augmentation.
    "seed": Recipe(),
    # fast_cnn with augmentation (random shifts of up to 4 pixels, i.e. pad-and-crop; flips), SGD + Nesterov
    # with a warmup-cosine schedule, label smoothing and decoupled weight decay; early stopping on the
    # validation split. Batch 256 at rate 0.2, the setting of the trials that chose fast_cnn (README, training).
    "best": Recipe(model="fast_cnn", optimizer="sgd", learning_rate=0.2, schedule="cosine", warmup_epochs=1.0,
                   weight_decay=5e-4, label_smoothing=0.1, augment=True, epochs=30, batch_size=256,
                   early_stopping_patience=6, scale_with_workers=True),
}


def resolve_recipe(name: str, **overrides) -> Recipe:
    """The named recipe with explicit settings (those not None) taking precedence."""
    if name not in RECIPES:
        raise ValueError(f"train.recipe: unknown recipe {name!r} (allowed: {', '.join(RECIPES)})")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
