"""Preprocess: the ``images`` dataset -> the fixed-shape ``pixels`` dataset.

Missing pixels are imputed at the source resolution, then images are
resized, given the configured channels and stored as uint8 (scaling to
[0, 1] happens where the model reads them). One output shard per input shard,
named deterministically, so a rerun skips what is done.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from PIL import Image

from fusion_core.config import Settings
from fusion_core.datasets import array_to_pixels, pixels_schema, read_shards, write_shard
from fusion_core.impute import impute_missing
from fusion_core.ingest import unpack_mask
from fusion_core.runs import StageResult
from fusion_core.store import Store

log = logging.getLogger(__name__)

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (N, H, W, C) batch to (N, size, size, C): area averaging down, bilinear up."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    method = Image.Resampling.BOX if size <= min(h, w) else Image.Resampling.BILINEAR
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if c == 1 else img)
        out[i] = np.asarray(pil.resize((size, size), method)).reshape(size, size, c)
    return out


def set_channels(images: np.ndarray, grayscale: bool) -> np.ndarray:
    """Convert a uint8 (N, H, W, C) batch to 1 channel (grayscale) or 3 (RGB)."""
    c = images.shape[-1]
    if grayscale and c == 3:
        return (images.astype(np.float32) @ GRAY_WEIGHTS + 0.5).astype(np.uint8)[..., None]
    if not grayscale and c == 1:
        return np.repeat(images, 3, axis=-1)
    return images


def preprocess_batch(images: np.ndarray, mask: np.ndarray, size: int, grayscale: bool,
                     method: str) -> np.ndarray:
    """Impute, resize and set channels for a batch of same-shape images.

    Args:
        images: uint8 (N, H, W, C).
        mask: bool (N, H, W), True where a pixel is missing.
    Returns:
        uint8 (N, size, size, 1 or 3).
    """
    images = images.copy()
    holes = mask.any(axis=(1, 2))
    if holes.any():
        filled = impute_missing(images[holes], mask[holes], method=method)
        images[holes] = np.clip(np.rint(filled), 0, 255).astype(np.uint8)
    return set_channels(resize_images(images, size), grayscale)


def preprocess_shard(root: str, in_path: str, out_path: str, size: int, grayscale: bool,
                     method: str) -> dict:
    """Preprocess one ``images`` shard into one ``pixels`` shard; returns its manifest entry and counts."""
    table = read_shards(root, [in_path])
    channels = 1 if grayscale else 3
    n = table.num_rows
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    fraction = np.zeros(n, dtype=np.float32)
    cols = table.select(["height", "width", "channels"]).to_pydict()
    shapes = list(zip(cols["height"], cols["width"], cols["channels"]))
    pixels, masks = table.column("pixels").to_pylist(), table.column("mask").to_pylist()
    for shape in sorted(set(shapes)):
        idx = np.array([i for i, s in enumerate(shapes) if s == shape])
        h, w, c = shape
        batch = np.stack([np.frombuffer(pixels[i], dtype=np.uint8).reshape(h, w, c) for i in idx])
        mask = np.stack([unpack_mask(masks[i], h, w) for i in idx])
        out[idx] = preprocess_batch(batch, mask, size, grayscale, method)
        fraction[idx] = mask.mean(axis=(1, 2))
    result = pa.table({
        "image_id": table.column("image_id"), "label": table.column("label"), "split": table.column("split"),
        "pixels": array_to_pixels(out), "imputed_fraction": pa.array(fraction),
        "impute_method": pa.array([method if f > 0 else None for f in fraction], pa.string()),
    }, schema=pixels_schema(size, size, channels))
    entry = write_shard(root, out_path, result)
    return {**entry, "imputed_images": int((fraction > 0).sum()), "imputed_pixels": float(fraction.sum())}


def _exists(root: str, rel_path: str) -> bool:
    fs, base = pafs.FileSystem.from_uri(root)
    return fs.get_file_info(f"{base.rstrip('/')}/{rel_path}").type == pafs.FileType.File


def preprocess_dataset(settings: Settings, run_id: str) -> StageResult:
    """Bring the ``pixels`` dataset up to date with the newest ``images`` version."""
    from fusion_core.ray_runtime import ensure_ray, gather

    store = Store.from_settings(settings)
    cfg = settings.preprocess
    images = store.latest_version("images")
    if images is None:
        raise RuntimeError("preprocess: no images dataset yet; run ingest first")
    cfg_hash = settings.section_hash("preprocess")
    key = f"images:{images['version']}:{cfg_hash}"
    done = store.find_version("pixels", key)
    if done:
        log.info("preprocess: pixels v%d already covers images v%d", done["version"], images["version"])
        return StageResult("preprocess", counts={"images": done["num_rows"], "new_shards": 0},
                           outputs={"dataset": "pixels", "version": done["version"]})
    plan = [(s["path"], f"datasets/pixels/{PurePosixPath(s['path']).stem}-{cfg_hash}.parquet")
            for s in images["shards"]]
    todo = [(src, dst) for src, dst in plan if not _exists(store.root, dst)]
    log.info("preprocess: %d of %d shards to process", len(todo), len(plan))
    ray = ensure_ray(settings)
    task = ray.remote(preprocess_shard)
    results = gather([task.remote(store.root, src, dst, cfg.size, cfg.grayscale, cfg.impute_method)
                      for src, dst in todo], "preprocess")
    manifest = [{"path": dst, "num_rows": n["num_rows"]} for (_, dst), n in zip(plan, _row_counts(store, plan))]
    channels = 1 if cfg.grayscale else 3
    version = store.commit_version("pixels", manifest, run_id, key=key,
                                   info={"images_version": images["version"],
                                         "shape": [cfg.size, cfg.size, channels]})
    imputed = sum(r["imputed_images"] for r in results)
    processed = sum(r["num_rows"] for r in results)
    return StageResult(
        "preprocess",
        counts={"images": sum(m["num_rows"] for m in manifest), "processed": processed,
                "new_shards": len(todo), "imputed_images": imputed},
        metrics={"mean_imputed_fraction": sum(r["imputed_pixels"] for r in results) / max(imputed, 1)},
        outputs={"dataset": "pixels", "version": version, "shape": [cfg.size, cfg.size, channels]},
    )


def _row_counts(store: Store, plan: list[tuple[str, str]]) -> list[dict]:
    import pyarrow.parquet as pq

    fs, base = pafs.FileSystem.from_uri(store.root)
    return [{"num_rows": pq.ParquetFile(f"{base.rstrip('/')}/{dst}", filesystem=fs).metadata.num_rows}
            for _, dst in plan]
