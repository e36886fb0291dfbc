"""Seeded generator of a small labelled image collection for demos and tests.

Each class folder holds procedurally drawn RGB images (shapes or textures) in
mixed encodings, a fraction of RGBA PNGs with a fully transparent "missing"
rectangle, and a few deliberately corrupt files. Output is byte-identical for
a given set of arguments.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "ring",
           "hstripes", "vstripes", "checker", "diagonal", "dots")
MIN_CONTRAST = 100  # minimum summed abs RGB difference between fg and bg
NOISE_SIGMA = 8.0
_PNG_PARAMS = {"format": "PNG", "optimize": False, "compress_level": 6}
_JPEG_PARAMS = {"format": "JPEG", "quality": 90, "optimize": False, "subsampling": "4:2:0"}


@dataclass(frozen=True)
class DemoSummary:
    """Result of :func:`generate_demo_images`."""

    root: str
    images: int
    with_missing: int
    corrupt: int


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draws a foreground/background colour pair with enough contrast."""
    while True:
        fg, bg = rng.integers(0, 256, size=(2, 3))
        if np.abs(fg - bg).sum() >= MIN_CONTRAST:
            return fg, bg


def _shape_mask(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws one filled/outlined shape of 10-26 px (at size 32) as a bool mask."""
    scale = size / 32
    lo = round((14 if name == "ring" else 10) * scale)
    s = int(rng.integers(lo, round(26 * scale) + 1))
    x0, y0 = (int(v) for v in rng.integers(0, size - s + 1, size=2))
    x1, y1 = x0 + s - 1, y0 + s - 1
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if name == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif name == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif name == "triangle":
        apex, base = (y0, y1) if rng.random() < 0.5 else (y1, y0)
        draw.polygon([(x0, base), (x1, base), ((x0 + x1) / 2, apex)], fill=255)
    elif name == "cross":
        t = int(rng.integers(max(2, s // 5), s // 3 + 1))
        a = x0 + (s - t) // 2
        draw.rectangle((x0, y0 + (s - t) // 2, x1, y0 + (s - t) // 2 + t - 1), fill=255)
        draw.rectangle((a, y0, a + t - 1, y1), fill=255)
    else:  # ring
        draw.ellipse((x0, y0, x1, y1), outline=255, width=int(rng.integers(2, 5)))
    return np.asarray(img) > 0


def _texture_mask(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Builds a stripe/checker/dots texture as a bool mask."""
    y, x = np.mgrid[0:size, 0:size]
    if name == "dots":
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        target, centres = int(rng.integers(5, 11)), []
        for _ in range(100):  # rejection sampling keeps the dots apart
            d = int(rng.integers(4, 7))
            cx, cy = (int(v) for v in rng.integers(0, size - d + 1, size=2))
            if all(max(abs(cx - ox), abs(cy - oy)) > 7 for ox, oy in centres):
                centres.append((cx, cy))
                draw.ellipse((cx, cy, cx + d - 1, cy + d - 1), fill=255)
            if len(centres) == target:
                break
        return np.asarray(img) > 0
    if name == "checker":
        cell = int(rng.integers(3, 6))  # period 6-10
        ox, oy = (int(v) for v in rng.integers(0, 2 * cell, size=2))
        return ((x + ox) // cell + (y + oy) // cell) % 2 == 0
    period = int(rng.integers(5, 11))
    width = int(rng.integers(2, period - 1))
    offset = int(rng.integers(0, period))
    coord = {"hstripes": y, "vstripes": x}.get(name)
    if coord is None:  # diagonal, either direction
        coord = x + y if rng.random() < 0.5 else x - y + size
    return (coord + offset) % period < width


def _draw(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Renders one noisy RGB image of class ``name`` as a uint8 array."""
    fg, bg = _colours(rng)
    mask = (_shape_mask if CLASSES.index(name) < 5 else _texture_mask)(name, size, rng)
    pixels = np.where(mask[..., None], fg, bg).astype(np.float64)
    pixels += rng.normal(0.0, NOISE_SIGMA, size=pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _punch_hole(rgb: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Returns an RGBA image whose random 4-12 px rectangle is fully transparent."""
    size = rgb.shape[0]
    h, w = (int(v) for v in rng.integers(4, min(12, size) + 1, size=2))
    y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[y0:y0 + h, x0:x0 + w] = 0
    return Image.fromarray(rgba, "RGBA")


def _encode(img: Image.Image, params: dict) -> bytes:
    """Encodes an image to bytes with fixed save parameters."""
    buf = io.BytesIO()
    img.save(buf, **params)
    return buf.getvalue()


def generate_demo_images(root: str | os.PathLike, per_class: int = 300, seed: int = 0,
                         missing_fraction: float = 0.1, corrupt: int = 5,
                         size: int = 32) -> DemoSummary:
    """Writes a deterministic labelled demo image collection under ``root``.

    Args:
        root: Output folder; ``root/<class>/`` folders are created as needed.
        per_class: Number of valid images per class.
        seed: Seed for all randomness; same arguments give identical bytes.
        missing_fraction: Fraction of images per class saved as RGBA PNG with
            a fully transparent rectangle.
        corrupt: Number of extra corrupt files, spread over classes.
        size: Width and height of the images in pixels.

    Returns:
        A summary with counts of what was written.

    Raises:
        ValueError: If an argument is out of range.
    """
    if per_class < 0 or corrupt < 0 or size < 16 or not 0.0 <= missing_fraction <= 1.0:
        raise ValueError("need per_class, corrupt >= 0, size >= 16, 0 <= missing_fraction <= 1")
    root_path = Path(root)
    n_missing = min(per_class, round(per_class * missing_fraction))
    for ci, name in enumerate(CLASSES):
        rng = np.random.default_rng([seed, ci])
        folder = root_path / name
        folder.mkdir(parents=True, exist_ok=True)
        missing = set(rng.choice(per_class, size=n_missing, replace=False).tolist())
        for i in range(per_class):
            rgb = _draw(name, size, rng)
            if i in missing:
                data, ext = _encode(_punch_hole(rgb, rng), _PNG_PARAMS), "png"
            elif i % 3 == 2:
                data, ext = _encode(Image.fromarray(rgb, "RGB"), _JPEG_PARAMS), "jpg"
            else:
                data, ext = _encode(Image.fromarray(rgb, "RGB"), _PNG_PARAMS), "png"
            (folder / f"{name}-{i:04d}.{ext}").write_bytes(data)
    sample = _encode(Image.new("RGB", (size, size), (128, 128, 128)), _PNG_PARAMS)
    kinds = ((b"", "png"), (sample[:40], "png"), (b"not an image\n", "jpg"))
    for k in range(corrupt):
        data, ext = kinds[k % len(kinds)]
        folder = root_path / CLASSES[k % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"corrupt-{k:02d}.{ext}").write_bytes(data)
    return DemoSummary(root=str(root_path), images=per_class * len(CLASSES),
                       with_missing=n_missing * len(CLASSES), corrupt=corrupt)
