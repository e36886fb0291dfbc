"""Preprocess: the ``images`` dataset -> the fixed-shape ``pixels`` dataset.

Missing pixels are imputed at the source resolution (``fusion_core.imaging.impute``),
then images are resized (stretched, or keeping their aspect with padding or a
centre crop), given the configured channels and stored as uint8. Scaling
happens in the model's first layer: to [0, 1], or standardized with the
per-channel mean and std of the training split, computed in the same pass and
stored in the dataset version's ``info``. One output shard per input shard,
named from the input shard and the settings, written deterministically, so a
rerun after a crash skips finished shards and produces identical files.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from fusion_core import uri
from fusion_core.config import PreprocessConfig, Settings
from fusion_core.data.derive import derivation_key, derive_dataset
from fusion_core.data.runs import StageResult
from fusion_core.imaging.impute import impute, methods_used
from fusion_core.store import Store
from fusion_core.store.datasets import (array_to_pixels, pixels_schema, pixels_to_array, read_shards, shape_of,
                                        shard_rows, unpack_mask, write_shard)

log = logging.getLogger(__name__)

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _target_size(h: int, w: int, size: int, fit: str) -> tuple[int, int]:
    """(height, width) to resize to before padding (``pad``) or centre cropping (``crop``)."""
    if fit == "stretch":
        return size, size
    scale = size / (max(h, w) if fit == "pad" else min(h, w))
    bound = min if fit == "pad" else max
    return bound(size, max(1, round(h * scale))), bound(size, max(1, round(w * scale)))


def resize_images(images: np.ndarray, size: int, resample: str = "area", fit: str = "stretch") -> np.ndarray:
    """Resize a uint8 (N, H, W, C) batch to (N, size, size, C).

    Args:
        resample: ``area`` (box averaging when shrinking, bilinear when enlarging) or ``bilinear``.
        fit: ``stretch`` to the square, or keep the aspect ratio and ``pad`` (with zeros, centred)
            or centre ``crop``.
    """
    n, h, w, c = images.shape
    th, tw = _target_size(h, w, size, fit)
    if (th, tw) == (h, w):
        resized = images
    else:
        area = resample == "area" and th <= h and tw <= w
        method = Image.Resampling.BOX if area else Image.Resampling.BILINEAR
        resized = np.empty((n, th, tw, c), dtype=np.uint8)
        for i, img in enumerate(images):
            pil = Image.fromarray(img[..., 0] if c == 1 else img)
            resized[i] = np.asarray(pil.resize((tw, th), method)).reshape(th, tw, c)
    if (th, tw) == (size, size):
        return resized
    out = np.zeros((n, size, size, c), dtype=np.uint8)
    oy, ox = abs(size - th) // 2, abs(size - tw) // 2
    if fit == "pad":
        out[:, oy:oy + th, ox:ox + tw] = resized
    else:
        out[:] = resized[:, oy:oy + size, ox:ox + size]
    return out


def set_channels(images: np.ndarray, grayscale: bool) -> np.ndarray:
    """Convert a uint8 (N, H, W, C) batch to 1 channel (grayscale) or 3 (RGB)."""
    c = images.shape[-1]
    if grayscale and c == 3:
        return (images.astype(np.float32) @ GRAY_WEIGHTS + 0.5).astype(np.uint8)[..., None]
    if not grayscale and c == 1:
        return np.repeat(images, 3, axis=-1)
    return images


def preprocess_batch(images: np.ndarray, mask: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
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
        filled = impute(images[holes], mask[holes], method=cfg.impute_method)
        images[holes] = np.clip(np.rint(filled), 0, 255).astype(np.uint8)
    return set_channels(resize_images(images, cfg.size, cfg.resample, cfg.fit), cfg.grayscale)


def pixel_sums(table: pa.Table) -> dict:
    """Exact per-channel sums over the training split of a pixels table: ``count``, ``sum``, ``sumsq``."""
    shape = shape_of(table.schema)
    train = table.filter(pc.equal(table.column("split"), "train"))
    px = pixels_to_array(train.column("pixels"), shape).reshape(-1, shape[-1]).astype(np.int64)
    return {"count": int(px.shape[0]), "sum": px.sum(axis=0).tolist(), "sumsq": (px * px).sum(axis=0).tolist()}


def channel_stats(sums: list[dict]) -> dict:
    """Per-channel mean and std (uint8 units) from ``pixel_sums`` of every shard."""
    count = max(sum(s["count"] for s in sums), 1)
    total = np.sum([s["sum"] for s in sums], axis=0, dtype=np.float64)
    sq = np.sum([s["sumsq"] for s in sums], axis=0, dtype=np.float64)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(max(float(v), 1e-3), 6) for v in std]}


def preprocess_shard(root: str, in_path: str, out_path: str, cfg: PreprocessConfig) -> dict:
    """Preprocess one ``images`` shard into one ``pixels`` shard.

    Returns:
        Its manifest entry, imputation counts and its ``pixel_sums``.
    """
    table = read_shards(root, [in_path])
    channels = 1 if cfg.grayscale else 3
    n = table.num_rows
    out = np.empty((n, cfg.size, cfg.size, channels), dtype=np.uint8)
    fraction = np.zeros(n, dtype=np.float32)
    used: list[str | None] = [None] * n
    cols = table.select(["height", "width", "channels"]).to_pydict()
    shapes = list(zip(cols["height"], cols["width"], cols["channels"]))
    pixels, masks = table.column("pixels").to_pylist(), table.column("mask").to_pylist()
    for shape in sorted(set(shapes)):
        idx = np.array([i for i, s in enumerate(shapes) if s == shape])
        h, w, c = shape
        batch = np.stack([np.frombuffer(pixels[i], dtype=np.uint8).reshape(h, w, c) for i in idx])
        mask = np.stack([unpack_mask(masks[i], h, w) for i in idx])
        out[idx] = preprocess_batch(batch, mask, cfg)
        fraction[idx] = mask.mean(axis=(1, 2))
        for i, name in zip(idx, methods_used(mask, cfg.impute_method)):
            used[i] = name
    result = pa.table({
        "image_id": table.column("image_id"), "label": table.column("label"), "split": table.column("split"),
        "pixels": array_to_pixels(out), "imputed_fraction": pa.array(fraction),
        "impute_method": pa.array(used, pa.string()),
    }, schema=pixels_schema(cfg.size, cfg.size, channels))
    entry = write_shard(root, out_path, result)
    return {**entry, "imputed_images": int((fraction > 0).sum()), "imputed_pixels": float(fraction.sum()),
            "sums": pixel_sums(result)}


def shard_pixel_sums(root: str, path: str) -> dict:
    """``pixel_sums`` of a pixels shard already written (by an earlier, interrupted run)."""
    return pixel_sums(read_shards(root, [path], columns=["split", "pixels"]))


def pixels_shard_path(images_shard: str, cfg_hash: str) -> str:
    """Where the pixels of an images shard go, per preprocess settings: named after the images shard."""
    return f"datasets/pixels/{PurePosixPath(images_shard).stem}-{cfg_hash}.parquet"


def preprocess_dataset(settings: Settings, store: Store, images_version: int, run_id: str) -> StageResult:
    """Derive the ``pixels`` version of ``images`` version ``images_version`` (reused when it exists)."""
    cfg = settings.preprocess
    images = store.require_version("images", images_version)
    cfg_hash = settings.section_hash("preprocess")
    channels = 1 if cfg.grayscale else 3
    done: list[dict] = []  # shards processed by this run

    def build() -> tuple[list[dict], dict]:
        from fusion_core.ray_runtime import ensure_ray, gather

        plan = [(s["path"], pixels_shard_path(s["path"], cfg_hash)) for s in images["shards"]]
        todo = [(src, dst) for src, dst in plan if not uri.is_file(store.path(dst))]
        log.info("preprocess: %d of %d shards to process", len(todo), len(plan))
        ray = ensure_ray(settings)
        task = ray.remote(preprocess_shard)
        done.extend(gather([task.remote(store.root, src, dst, cfg) for src, dst in todo], "preprocess"))
        earlier = [dst for src, dst in plan if (src, dst) not in todo]  # written by an interrupted run
        sums = [r["sums"] for r in done] + gather(
            [ray.remote(shard_pixel_sums).remote(store.root, dst) for dst in earlier], "preprocess stats")
        written = {r["path"]: r for r in done}  # the rest get their rows and checksum from their files
        manifest = [written.get(dst) or {"path": dst, "num_rows": shard_rows(store.root, dst)} for _, dst in plan]
        return manifest, {"images_version": images["version"], "shape": [cfg.size, cfg.size, channels],
                          "scale": cfg.scale, "stats": channel_stats(sums)}

    pixels, reused = derive_dataset(store, "pixels", derivation_key("images", images["version"], cfg_hash), run_id,
                                    build)
    imputed = sum(r["imputed_images"] for r in done)
    return StageResult(
        "preprocess",
        counts={"images": pixels["num_rows"], "reused": int(reused), "processed": sum(r["num_rows"] for r in done),
                "new_shards": len(done), "imputed_images": imputed},
        metrics={"mean_imputed_fraction": sum(r["imputed_pixels"] for r in done) / max(imputed, 1)},
        outputs={"dataset": "pixels", "version": pixels["version"], "shape": pixels["info"]["shape"]},
    )
