"""Image quality: per-image statistics of the stored (decoded, not resized) pixels, the flags they raise, and a
perceptual hash that near-copies share.

The flags, and the statistic each reads (pixel values scaled to 0-1; ``grey`` is the mean of the channels):

- ``dark`` / ``light``: mean brightness below ``dark_below`` / above ``light_above``;
- ``near_constant``: standard deviation of brightness below ``constant_below``;
- ``low_information``: entropy of the 32-bin brightness histogram below ``entropy_below`` bits;
- ``blurry``: variance of the Laplacian of brightness below ``blurry_below``;
- ``grey``: no colour (mean difference between channels below ``colour_below``) in a collection where most
  images have colour;
- ``odd_size``: aspect ratio beyond ``max_aspect`` (either way), or an area beyond ``size_factor`` times the
  collection's median area (either way).

Thresholds are absolute, so a flag means the same in every collection; the defaults flag about 0.1% of the
CIFAR-10 photographs each.

The perceptual hash (``dhash``) is a difference hash: a 9x8 grey thumbnail, one bit per pixel for whether it
is brighter than its right neighbour. A re-encoded, resized or slightly recoloured copy keeps it; an image
with no brightness change anywhere has none (0). Being grey and coarse, it is shared by images of the same
layout in other colours too (stripes, checks), so a near-copy must also have a colour ``thumbnail`` (8x8 RGB)
close to the other's (``thumbnail_distance``: the mean absolute difference, 0-1; ``mine.copy_distance``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from PIL import Image

STATS = pa.schema([pa.field("image_id", pa.string()), pa.field("brightness", pa.float32()),
                   pa.field("contrast", pa.float32()), pa.field("entropy", pa.float32()),
                   pa.field("sharpness", pa.float32()), pa.field("colour", pa.float32()),
                   pa.field("height", pa.int32()), pa.field("width", pa.int32()), pa.field("phash", pa.int64()),
                   pa.field("thumb", pa.binary(192))])


def image_stats(images: pa.Table) -> pa.Table:
    """The ``STATS`` of each row of an ``images`` table (image_id, height, width, channels, pixels)."""
    columns = images.select(["height", "width", "channels", "pixels"]).to_pydict()
    stats = np.array([_stats(np.frombuffer(p, np.uint8).reshape(h, w, c)) for h, w, c, p in
                      zip(columns["height"], columns["width"], columns["channels"], columns["pixels"])],
                     dtype=np.float32).reshape(-1, 5)
    decoded = [np.frombuffer(p, np.uint8).reshape(h, w, c) for h, w, c, p in
               zip(columns["height"], columns["width"], columns["channels"], columns["pixels"])]
    return pa.table([images.column("image_id"), *(pa.array(col) for col in stats.T), images.column("height"),
                     images.column("width"), pa.array([dhash(image) for image in decoded], pa.int64()),
                     pa.array([thumbnail(image).tobytes() for image in decoded], pa.binary(192))], schema=STATS)


def dhash(image: np.ndarray) -> int:
    """The 64-bit difference hash of one HWC uint8 image, as a signed integer (0: no brightness change)."""
    grey = Image.fromarray(image[:, :, :3].mean(axis=2).astype(np.uint8)).resize((9, 8), Image.Resampling.BOX)
    thumb = np.asarray(grey, dtype=np.int16)
    return int(np.packbits((thumb[:, 1:] > thumb[:, :-1]).ravel()).view(">i8")[0])


def thumbnail(image: np.ndarray) -> np.ndarray:
    """An 8x8 RGB thumbnail (uint8) of one HWC uint8 image (a grey image's channel repeated)."""
    rgb = image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((8, 8), Image.Resampling.BOX))


def thumbnails(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``thumb`` column as a uint8 array (N, 192); a missing thumbnail is all zeros."""
    values = column.fill_null(bytes(192)).to_pylist()
    return np.frombuffer(b"".join(values), np.uint8).reshape(len(values), 192)


def thumbnail_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The mean absolute difference (0-1) between thumbnails ``a`` and ``b`` (N, 192 or 8, 8, 3), row by row."""
    a, b = a.reshape(len(a), -1).astype(np.int16), b.reshape(len(b), -1).astype(np.int16)
    return np.abs(a - b).mean(axis=1) / 255


def _stats(image: np.ndarray) -> tuple[float, float, float, float, float]:
    """Brightness, contrast, entropy, sharpness and colour of one HWC uint8 image."""
    pixels = image.astype(np.float32) / 255
    grey = pixels.mean(axis=2)
    counts = np.bincount(np.minimum(grey * 32, 31).astype(np.int64).ravel(), minlength=32)
    share = counts[counts > 0] / grey.size
    sharpness = 0.0
    if min(grey.shape) >= 3:
        laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
        sharpness = float(laplacian.var())
    colour = float(np.abs(np.diff(pixels, axis=2)).mean()) if image.shape[2] >= 3 else 0.0
    return float(grey.mean()), float(grey.std()), float(-(share * np.log2(share)).sum()), sharpness, colour


def quality_flags(stats: pa.Table, cfg) -> list[str | None]:
    """Each image's flags, comma-separated (None: none), from the ``STATS`` of the whole collection and the
    thresholds of ``cfg`` (a ``QualityConfig``)."""
    s = {name: stats.column(name).to_numpy(zero_copy_only=False) for name in STATS.names[1:-2]}
    area = s["height"].astype(np.float64) * s["width"]
    aspect = s["width"] / np.maximum(s["height"], 1)
    median = np.median(area) if len(area) else 0.0
    colourless = s["colour"] < cfg.colour_below
    flags = {
        "dark": s["brightness"] < cfg.dark_below,
        "light": s["brightness"] > cfg.light_above,
        "near_constant": s["contrast"] < cfg.constant_below,
        "low_information": s["entropy"] < cfg.entropy_below,
        "blurry": s["sharpness"] < cfg.blurry_below,
        "grey": colourless & (colourless.mean() < 0.5 if len(area) else False),
        "odd_size": ((aspect > cfg.max_aspect) | (aspect < 1 / cfg.max_aspect) | (area * cfg.size_factor < median)
                     | (area > median * cfg.size_factor)),
    }
    names = np.array(list(flags))
    raised = np.stack(list(flags.values()), axis=1) if len(area) else np.zeros((0, len(flags)), bool)
    return [",".join(names[row]) or None for row in raised]
