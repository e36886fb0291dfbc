"""Which models can score which pixels (fusion_core.learning.scoring.mismatch), and inference refusing a model
that cannot (no TensorFlow: the published "model" is a few bytes, never loaded)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fusion_core.learning.registry import register_model
from fusion_core.learning.scoring import mismatch
from fusion_core.store import Store
from fusion_core.store.datasets import array_to_pixels, pixels_schema, write_shard


def test_mismatch_names_the_shapes_or_the_unknown_classes():
    assert mismatch(["cat", "dog"], (32, 32, 3), ["cat"], (32, 32, 3)) is None
    assert mismatch(["cat", "dog"], (32, 32, 3), ["cat"], [32, 32, 1]) == \
        "it takes 32x32x3 images, these pixels are 32x32x1"
    assert mismatch(["cat", "dog"], (8, 8, 3), ["cat", "emu", "yak"], (8, 8, 3)) == \
        "it does not know the classes emu, yak"


def _pixels(store: Store, labels: list[str], shape=(4, 4, 3)) -> int:
    import numpy as np

    n = len(labels)
    table = pa.table({"image_id": [f"{i:064x}" for i in range(n)], "label": labels, "split": ["train"] * n,
                      "pixels": array_to_pixels(np.zeros((n, *shape), np.uint8)),
                      "imputed_fraction": pa.array([0.0] * n, pa.float32()), "impute_method": [None] * n},
                     schema=pixels_schema(*shape))
    return store.commit_version("pixels", [write_shard(store.root, f"datasets/pixels/{n}-{shape[2]}.parquet", table)],
                                None, info={"shape": list(shape)})


@pytest.mark.parametrize("labels, shape, says", [
    (["cat", "emu"], (4, 4, 3), "does not know the classes emu"),
    (["cat", "dog"], (4, 4, 1), "it takes 4x4x3 images, these pixels are 4x4x1"),
])
def test_inference_refuses_a_model_that_does_not_fit_the_pixels(tmp_path, labels, shape, says, settings):
    from fusion_core.stages.infer import infer_dataset

    store = Store(str(tmp_path / "store"))
    trained_on = _pixels(store, ["cat", "dog"])
    (tmp_path / "m.keras").write_bytes(b"not read")
    model = register_model(store, str(tmp_path / "m.keras"), ["cat", "dog"], run_id="r", name="seed_cnn", key="k",
                           dataset_version=trained_on, metrics={}, config={"input_shape": [4, 4, 3]})
    pixels = _pixels(store, labels, shape)
    with pytest.raises(ValueError, match=f"infer: model v1 cannot predict pixels v{pixels}: .*{says}"):
        infer_dataset(settings, store, pixels, model["version"], "run")
