"""One image's lineage: where it came from, how it is stored, and what every run made of it."""

from __future__ import annotations

import pyarrow.compute as pc

from fusion_core.store import Store
from fusion_core.store.datasets import read_shard, unpack_mask


def image_lineage(store: Store, image_id: str) -> dict:
    """Everything the store knows about one image: its source paths, its row in the newest ``images``
    version (label, split, size, the fraction of missing pixels that preprocess imputes), its predictions,
    cluster assignments and mining findings in every run (newest first), and people's decision about it."""
    decision = store.decision_rows(image_id)
    return {"image_id": image_id, "sources": store.sources_of([image_id]).get(image_id, []),
            "stored": _stored_row(store, image_id),
            "predictions": [{k: r[k] for k in ("run_id", "model_version", "label", "predicted", "confidence",
                                               "split")} for r in store.image_results("predictions", image_id)],
            "clusters": [{k: r[k] for k in ("run_id", "cluster", "distance")}
                         for r in store.image_results("cluster_assignments", image_id)],
            "findings": [{k: v for k, v in r.items() if k != "image_id" and v is not None}
                         for r in store.image_results("findings", image_id)],
            "decision": decision[0] if decision else None}

def _stored_row(store: Store, image_id: str) -> dict | None:
    """The image's row in the newest ``images`` version (shards read one at a time, the id pushed down)."""
    images = store.latest_version("images")
    for shard in (images or {}).get("shards", []):
        rows = read_shard(store.root, shard["path"], ["label", "split", "height", "width", "channels", "mask"],
                          pc.field("image_id") == image_id).to_pylist()
        if rows:
            row = rows[0]
            missing = (float(unpack_mask(row["mask"], row["height"], row["width"]).mean())
                       if row["mask"] is not None else 0.0)
            return {"images_version": images["version"], "shard": shard["path"], "label": row["label"],
                    "split": row["split"], "size": f"{row['height']}x{row['width']}x{row['channels']}",
                    "missing": round(missing, 4)}
    return None
