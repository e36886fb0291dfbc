"""Ingest: image files -> the ``images`` dataset (Parquet shards) plus quarantine rows.

Files are hashed, deduplicated by content against the catalog, decoded by
content (never by extension), stripped of metadata (only pixels are kept) and
written as shards by Ray tasks, many files per task. Files that cannot be
used are quarantined with their reason; the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from fusion_core.config import Settings
from fusion_core.datasets import IMAGES_SCHEMA, write_shard
from fusion_core.runs import StageResult
from fusion_core.store import Store

log = logging.getLogger(__name__)


class QuarantineError(Exception):
    """A file that cannot be ingested; ``reason`` is its error class."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def list_source_files(source: str | os.PathLike) -> list[tuple[str, str | None]]:
    """Every file under a folder, followed recursively, with its label.

    The label is the first-level subfolder's name; files directly under the
    source are unlabelled. Hidden files are skipped.

    Returns:
        Sorted ``(path, label)`` pairs.
    """
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"source {str(source)!r} is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        label = rel.parts[0] if rel.parts else None
        found += [(str(Path(dirpath) / f), label) for f in filenames if not f.startswith(".")]
    return sorted(found)


def split_for(image_id: str, val_fraction: float, test_fraction: float) -> str:
    """The split an image belongs to forever, derived from its content hash."""
    u = int(image_id[:8], 16) / 16**8
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode image bytes by content into pixels and a missing-pixel mask.

    EXIF orientation is applied; nothing but pixels is kept. Fully transparent
    pixels (alpha == 0) are reported as missing.

    Returns:
        ``(pixels, mask)``: uint8 (H, W, C) with C 1 or 3, and bool (H, W) or None.

    Raises:
        QuarantineError: with reason ``empty_file``, ``not_an_image``,
            ``too_many_pixels`` or ``decode_error``.
    """
    if not data:
        raise QuarantineError("empty_file", "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise QuarantineError("too_many_pixels",
                                          f"{img.width}x{img.height} exceeds ingest.max_pixels={max_pixels}")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_arrays(img)
    except QuarantineError:
        raise
    except UnidentifiedImageError:
        raise QuarantineError("not_an_image", "content is not a supported image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise QuarantineError("too_many_pixels", str(err)) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise QuarantineError("decode_error", f"{type(err).__name__}: {err}") from None


def _to_arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"))
        mask = rgba[..., 3] == 0
        pixels = rgba[..., :3] if img.mode != "LA" else rgba[..., :1]
        return np.ascontiguousarray(pixels), (mask if mask.any() else None)
    if img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        if img.mode.startswith("I") or img.mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            return (np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))[..., None], None
        return np.asarray(img.convert("L"))[..., None], None
    return np.asarray(img.convert("RGB")), None


def hash_files(items: list[tuple[str, str | None]]) -> list[dict]:
    """Content-hash files (sha256 of their bytes). Unreadable files get an ``error``."""
    out = []
    for path, label in items:
        try:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out.append({"source": path, "label": label, "image_id": digest})
        except OSError as err:
            out.append({"source": path, "label": label, "image_id": "",
                        "error": ("unreadable", f"{type(err).__name__}: {err}")})
    return out


def ingest_chunk(root: str, items: list[dict], val_fraction: float, test_fraction: float,
                 max_pixels: int) -> tuple[dict | None, list[dict]]:
    """Decode a chunk of new files and write them as one shard.

    Args:
        root: store root; the shard is named from the content hashes it holds.
        items: ``{"source", "label", "image_id"}`` of distinct new images.

    Returns:
        ``(manifest entry or None, quarantine rows)``.
    """
    rows: dict[str, list] = {name: [] for name in IMAGES_SCHEMA.names}
    bad = []
    for item in items:
        try:
            with open(item["source"], "rb") as fh:
                pixels, mask = decode_image(fh.read(), max_pixels)
        except QuarantineError as err:
            bad.append(_quarantine_row(item, err.reason, str(err)))
            continue
        except OSError as err:
            bad.append(_quarantine_row(item, "unreadable", f"{type(err).__name__}: {err}"))
            continue
        h, w, c = pixels.shape
        for name, value in (("image_id", item["image_id"]), ("source", item["source"]),
                            ("label", item["label"]),
                            ("split", split_for(item["image_id"], val_fraction, test_fraction)),
                            ("height", h), ("width", w), ("channels", c), ("pixels", pixels.tobytes()),
                            ("mask", None if mask is None else np.packbits(mask).tobytes())):
            rows[name].append(value)
    if not rows["image_id"]:
        return None, bad
    name = hashlib.sha256("".join(rows["image_id"]).encode()).hexdigest()[:20]
    table = pa.table(rows, schema=IMAGES_SCHEMA)
    return write_shard(root, f"datasets/images/{name}.parquet", table), bad


def _quarantine_row(item: dict, reason: str, message: str) -> dict:
    return {"source": item["source"], "content_hash": item["image_id"], "stage": "ingest",
            "error_class": reason, "message": message[:2000]}


def unpack_mask(packed: bytes | None, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask stored by ingest (all False when none was stored)."""
    if packed is None:
        return np.zeros((height, width), dtype=bool)
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def ingest_source(settings: Settings, source: str, run_id: str) -> StageResult:
    """Ingest every new image under ``source`` and commit a new ``images`` version.

    Rerunning on the same files adds nothing; a file whose content is already
    stored only has its path recorded.
    """
    from fusion_core.ray_runtime import ensure_ray, gather

    store = Store.from_settings(settings)
    cfg = settings.ingest
    ray = ensure_ray(settings)
    files = list_source_files(source)
    log.info("ingest: %d files under %s", len(files), source)

    hash_task = ray.remote(hash_files)
    hashed = [h for chunk in gather([hash_task.remote(c) for c in _chunks(files, cfg.files_per_task)],
                                    "ingest/hash") for h in chunk]
    quarantined = [_quarantine_row(h, *h["error"]) for h in hashed if "error" in h]
    known, known_sources = store.known_image_ids(), store.known_sources()
    new: dict[str, dict] = {}
    extra_sources = []
    for h in hashed:
        if "error" in h:
            continue
        if h["image_id"] in known or h["image_id"] in new:
            if (h["image_id"], h["source"]) not in known_sources:
                extra_sources.append(h)
        else:
            new[h["image_id"]] = h
    todo = [new[k] for k in sorted(new)]
    log.info("ingest: %d files with new content", len(todo))

    chunk_task = ray.remote(ingest_chunk)
    results = gather([chunk_task.remote(store.root, c, cfg.val_fraction, cfg.test_fraction, cfg.max_pixels)
                      for c in _chunks(todo, cfg.files_per_task)], "ingest/decode")
    shards = [entry for entry, _ in results if entry]
    for _, bad in results:
        quarantined += bad
    bad = {q["content_hash"]: q for q in quarantined}
    quarantined += [{**bad[h["image_id"]], "source": h["source"]}
                    for h in extra_sources if h["image_id"] in bad]
    sources = [{"image_id": h["image_id"], "source": h["source"]}
               for h in todo + extra_sources if h["image_id"] not in bad]

    previous = store.latest_version("images")
    version = previous["version"] if previous else None
    if shards:
        manifest = (previous["shards"] if previous else []) + shards
        version = store.commit_version("images", manifest, run_id, sources=sources,
                                       info={"source": str(source)})
    elif sources:
        store.record_sources(sources, run_id)
    new_quarantine = store.add_quarantine(run_id, quarantined)
    reasons = Counter(q["error_class"] for q in quarantined)
    added = sum(s["num_rows"] for s in shards)
    already = len(files) - added - len(quarantined)
    total = store.latest_version("images")
    return StageResult(
        "ingest",
        counts={"files": len(files), "new_images": added, "already_stored": already,
                "quarantined": len(quarantined), "new_quarantine_rows": new_quarantine,
                "quarantine_reasons": dict(reasons), "total_images": total["num_rows"] if total else 0},
        outputs={"dataset": "images", "version": version, "new_shards": [s["path"] for s in shards]},
    )
