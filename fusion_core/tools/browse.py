"""Stored images as people look for them: listed with their metadata and source paths, and exported as a
folder tree grouped by predicted label or cluster."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusion_core import uri
from fusion_core.store import Store
from fusion_core.store.datasets import iter_shard_batches
from fusion_core.store.results import path_matches

BATCH_ROWS = 500  # images read, and looked up in the catalog, at a time
GROUPS = {"predicted": ("predictions", "predicted", "infer"), "cluster": ("cluster_assignments", "cluster", "cluster")}


def list_images(store: Store, images: dict, label: str | None = None, split: str | None = None,
                imputed: bool = False, path_glob: str | None = None) -> Iterator[dict]:
    """The images of an ``images`` version with their metadata, not their pixels, read a batch at a time.

    Each row has the image's source paths (``path`` is the first) and ``missing``, the fraction of its pixels
    that were missing and that preprocess imputes; ``imputed`` keeps only images with missing pixels.
    """
    columns = ["image_id", "source", "label", "split", "height", "width", "channels", "mask"]
    for shard in images["shards"]:
        for batch in iter_shard_batches(store.root, shard["path"], columns, BATCH_ROWS):
            rows = [r for r in batch.to_pylist() if (label is None or r["label"] == label)
                    and (split is None or r["split"] == split) and (not imputed or r["mask"] is not None)]
            sources = store.sources_of(r["image_id"] for r in rows)
            for row in rows:
                paths = sources.get(row["image_id"]) or [row["source"]]
                if path_glob and not any(path_matches(path_glob, p) for p in paths):
                    continue
                mask = row.pop("mask")
                missing = 0.0 if mask is None else float(
                    np.unpackbits(np.frombuffer(mask, np.uint8), count=row["height"] * row["width"]).mean())
                yield {"image_id": row["image_id"], "path": paths[0], "label": row["label"], "split": row["split"],
                       "height": row["height"], "width": row["width"], "channels": row["channels"],
                       "missing": round(missing, 4), "sources": paths}


def export_tree(store: Store, run_id: str, by: str, out: Path, images: dict, copy: bool = False) -> dict:
    """Write ``out/<group>/<image>`` for each image the run's results group (``by``: ``predicted`` or
    ``cluster``), reading the images a batch at a time.

    An image is a symbolic link to its source file when that is a local file that still exists (and not
    ``copy``); otherwise the stored, decoded image is written as a PNG.

    Returns:
        Counts: ``images``, ``linked``, ``written``, ``groups``.

    Raises:
        ValueError: ``out`` exists and is not empty.
    """
    from PIL import Image

    table, column, _ = GROUPS[by]
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"export: {out} is not empty; name a new folder")
    counts, groups = {"images": 0, "linked": 0, "written": 0}, set()
    columns = ["image_id", "source", "height", "width", "channels", "pixels"]
    for shard in images["shards"]:
        for batch in iter_shard_batches(store.root, shard["path"], columns, BATCH_ROWS):
            ids = batch.column("image_id").to_pylist()
            found = {i: r[column] for i, r in store.results_by_image(table, run_id, ids).items()}
            for row in batch.to_pylist():
                if row["image_id"] not in found:
                    continue
                group = safe_name(f"cluster-{found[row['image_id']]}" if by == "cluster" else found[row["image_id"]])
                folder = out / group
                folder.mkdir(parents=True, exist_ok=True)
                groups.add(group)
                stem = f"{row['image_id'][:12]}-{safe_name(Path(row['source']).name)[:80]}"
                if not copy and _local_file(row["source"]):
                    os.symlink(row["source"], folder / stem)
                    counts["linked"] += 1
                else:
                    pixels = np.frombuffer(row["pixels"], np.uint8).reshape(row["height"], row["width"],
                                                                           row["channels"])
                    Image.fromarray(pixels.squeeze(-1) if row["channels"] == 1 else pixels).save(
                        folder / f"{Path(stem).stem}.png")
                    counts["written"] += 1
                counts["images"] += 1
    return {**counts, "groups": len(groups)}


def safe_name(text: str) -> str:
    """``text`` as one file or folder name: no path separators or NUL, never ``.``, ``..`` or empty."""
    name = re.sub(r"[/\\\x00]", "_", str(text)).strip()[:100]
    return name if name.strip(".") else f"_{name}"


def _local_file(source: str) -> bool:
    """Whether a source is a file on this machine (not an archive member, a CIFAR batch entry or a URI)."""
    return not uri.is_uri(source) and "!/" not in source and os.path.isfile(source)
