"""Similar images: the stored images nearest to one image by cosine similarity of their embeddings.

The query is a stored image (its embedding is read from the predictions) or any image file, decoded, prepared
with the preprocess settings given and embedded by the model that made the predictions. The search is exact:
the predictions' embeddings are scanned one shard at a time, so memory stays that of one shard whatever the
collection's size.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from fusion_core.config import Settings
from fusion_core.learning import registry
from fusion_core.learning.mining import normalised
from fusion_core.store import Store
from fusion_core.store.datasets import fixed_list_to_array, read_shard

COLUMNS = ["image_id", "label", "split", "predicted", "embedding"]


def stored_embedding(store: Store, predictions: dict, image_id: str) -> np.ndarray | None:
    """The embedding the predictions hold for ``image_id`` (None: not among them)."""
    for shard in predictions["shards"]:
        rows = read_shard(store.root, shard["path"], ["embedding"], filters=[("image_id", "==", image_id)])
        if rows.num_rows:
            return fixed_list_to_array(rows.column("embedding"))[0]
    return None


def file_embedding(settings: Settings, store: Store, predictions: dict, data: bytes) -> np.ndarray:
    """The embedding of an encoded image, prepared as the preprocess settings say and embedded by the
    predictions' model.

    Raises:
        ValueError: the file is no image, or its prepared shape is not the one the model takes.
    """
    from fusion_core.data.decode import decode_image
    from fusion_core.learning.model import embedding_model
    from fusion_core.learning.scoring import predict_with_embeddings
    from fusion_core.stages.preprocess import preprocess_batch

    pixels, mask = decode_image(data, settings.ingest.max_pixels)
    mask = np.zeros(pixels.shape[:2], bool) if mask is None else mask
    image = preprocess_batch(pixels[None], mask[None], settings.preprocess)
    model = store.get_model(predictions["info"]["model_version"])
    network = embedding_model(registry.load_published(model["path"], compile=False))
    if tuple(network.input_shape[1:]) != image.shape[1:]:
        raise ValueError(f"the image prepares to {'x'.join(map(str, image.shape[1:]))} but model "
                         f"v{model['version']} takes {'x'.join(map(str, network.input_shape[1:]))}: "
                         "use the preprocess settings the store was made with (-c, --set)")
    return predict_with_embeddings(network, image, 1)[1][0]


def nearest(store: Store, predictions: dict, query: np.ndarray, k: int, skip: str | None = None) -> list[dict]:
    """The ``k`` stored images most similar to the embedding ``query`` (``skip``: an image id left out), most
    similar first, each with its similarity, label, split and prediction."""
    query = normalised(query[None])[0]
    best: list[dict] = []
    for shard in predictions["shards"]:
        rows = read_shard(store.root, shard["path"], COLUMNS)
        if skip is not None:
            rows = rows.filter(pc.not_equal(rows.column("image_id"), skip))
        if not rows.num_rows:
            continue
        similarity = normalised(fixed_list_to_array(rows.column("embedding"))) @ query
        top = np.argsort(-similarity, kind="stable")[:k]
        picked = rows.drop_columns(["embedding"]).take(top).to_pylist()
        best = sorted(best + [{**r, "similarity": float(similarity[i])} for r, i in zip(picked, top)],
                      key=lambda r: (-r["similarity"], r["image_id"]))[:k]
    return best
