"""Image bytes -> pixels and a missing-pixel mask, by content (never by file name).

Baseline JPEGs without EXIF (the bulk of most collections) go through OpenCV's
libjpeg-turbo decoder, which gives the same pixels as Pillow faster (see
``bench/ingest.py``); everything else goes through Pillow. EXIF orientation is applied to
the pixels and nothing but pixels is kept. Pixels that are missing at the
source (alpha == 0, the undecodable rest of a truncated file, an explicit
mask) come back as a boolean mask.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# EXIF orientation -> the transpose that displays the image upright (as PIL.ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


class QuarantineError(Exception):
    """An input that cannot be ingested; ``reason`` is its error class."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int,
                 mask_data: bytes | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode image bytes into pixels and a missing-pixel mask.

    Args:
        data: the encoded image (JPEG, PNG, BMP, GIF (first frame), TIFF or WebP).
        max_pixels: larger images are refused before decoding.
        mask_data: an optional encoded mask image of the oriented image's size;
            non-zero pixels are missing.

    Returns:
        ``(pixels, mask)``: uint8 (H, W, C) with C 1 or 3, and bool (H, W) or None.

    Raises:
        QuarantineError: reason ``empty_file``, ``not_an_image``, ``truncated``,
            ``too_many_pixels``, ``decode_error`` or ``bad_mask``.
    """
    if not data:
        raise QuarantineError("empty_file", "file is empty")
    decoded = _decode_plain_jpeg(data, max_pixels)
    pixels, mask = decoded if decoded is not None else _decode_with_pillow(data, max_pixels)
    if mask_data is not None:
        explicit = decode_mask(mask_data, pixels.shape[:2], max_pixels)
        mask = explicit if mask is None else mask | explicit
    if mask is not None and not mask.any():
        mask = None
    return pixels, mask


def decode_mask(data: bytes, shape: tuple[int, int], max_pixels: int) -> np.ndarray:
    """An explicit mask image (non-zero = missing) as a bool (H, W) array of ``shape``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise QuarantineError("bad_mask", f"mask {img.width}x{img.height} exceeds ingest.max_pixels")
            mask = np.asarray(img.convert("L")) > 0
    except (OSError, ValueError, SyntaxError) as err:
        raise QuarantineError("bad_mask", f"mask does not decode: {type(err).__name__}: {err}") from None
    if mask.shape != tuple(shape):
        raise QuarantineError("bad_mask", f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return mask


def _jpeg_header(data: bytes) -> tuple[int, int, int, bool] | None:
    """``(height, width, components, plain)`` of a JPEG; plain means no EXIF and no Adobe colour transform."""
    pos, n, plain = 2, len(data), True
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00" or marker == 0xEE:
            plain = False
        if marker in _SOF:
            if pos + 10 > n:
                return None
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return height, width, data[pos + 9], plain and marker in (0xC0, 0xC1, 0xC2)
        pos += 2 + length
    return None


@functools.cache
def _opencv():
    """OpenCV, imported on first use and kept to one thread (ingest parallelises over processes)."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def _decode_plain_jpeg(data: bytes, max_pixels: int) -> tuple[np.ndarray, None] | None:
    """Fast path: a complete JPEG without EXIF, 1 or 3 components, decoded by OpenCV; else None."""
    if not (data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")):
        return None
    header = _jpeg_header(data)
    if header is None or not header[3] or header[2] not in (1, 3):
        return None
    height, width, components, _ = header
    if height * width > max_pixels:
        raise QuarantineError("too_many_pixels", f"{width}x{height} exceeds ingest.max_pixels={max_pixels}")
    cv2 = _opencv()
    flag = cv2.IMREAD_GRAYSCALE if components == 1 else cv2.IMREAD_COLOR_RGB
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.shape[:2] != (height, width):
        return None
    return (pixels[..., None] if pixels.ndim == 2 else pixels), None


def _decode_with_pillow(data: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise QuarantineError("too_many_pixels",
                                      f"{img.width}x{img.height} exceeds ingest.max_pixels={max_pixels}")
            try:
                img.load()
                missing = None
                if img.format == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                    raise OSError("image file is truncated (no end-of-image marker)")
            except OSError as err:
                if "truncated" not in str(err):
                    raise
                img, missing = _load_truncated(data)
            method = _ORIENTATION.get(img.getexif().get(0x0112))
            if method is not None:
                img = img.transpose(method)
                missing = None if missing is None else np.asarray(Image.fromarray(missing).transpose(method))
            pixels, alpha_missing = _to_arrays(img)
    except QuarantineError:
        raise
    except UnidentifiedImageError:
        if data.startswith(_MAGIC):
            raise QuarantineError("truncated", "image header is incomplete") from None
        raise QuarantineError("not_an_image", "content is not a supported image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise QuarantineError("too_many_pixels", str(err)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        reason = "truncated" if "truncated" in str(err) else "decode_error"
        raise QuarantineError(reason, f"{type(err).__name__}: {err}") from None
    if missing is not None and alpha_missing is not None:
        missing = missing | alpha_missing
    return pixels, alpha_missing if missing is None else missing


def _load_truncated(data: bytes) -> tuple[Image.Image, np.ndarray]:
    """Decode what a truncated file holds; the mask marks the pixels it does not hold.

    Pillow decodes the file twice with different continuations: onto canvases
    of two colours (pixels the decoder never writes differ), or for a baseline
    JPEG, whose decoder fills in what it lacks, followed by two different
    random entropy-coded tails (every MCU from the first one that differs
    depends on bytes the file does not have). A truncated progressive JPEG has
    no final pixel and is refused.
    """
    jpeg = data.startswith(b"\xff\xd8")
    if jpeg and Image.open(io.BytesIO(data)).info.get("progressive"):
        raise QuarantineError("truncated", "progressive JPEG is truncated: no pixel is final")
    decoded = []
    for seed, fill in ((1, 0), (2, 255)):
        if jpeg:
            tail = np.random.default_rng(seed).integers(0, 255, 2 * len(data) + 4096, dtype=np.uint8)
            img = Image.open(io.BytesIO(data + tail.tobytes() + b"\xff\xd9"))
        else:
            img = Image.open(io.BytesIO(data))
            bands = len(img.getbands())
            img.im = Image.new(img.mode, img.size, fill if bands == 1 else (fill,) * bands).im
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        decoded.append(img)
    a, b = (np.asarray(img) for img in decoded)
    missing = (a != b).reshape(a.shape[0], a.shape[1], -1).any(axis=-1)
    if jpeg:
        missing = _mcus_from_first(decoded[0], missing)
    if missing.all():
        raise QuarantineError("truncated", "file is truncated before any pixel")
    return decoded[0], missing


def _mcus_from_first(img: Image.Image, differs: np.ndarray) -> np.ndarray:
    """Every MCU of a JPEG from the first (in decoding order) that holds a differing pixel."""
    layers = getattr(img, "layer", None) or [(None, 1, 1, None)]
    mh, mw = 8 * max(lay[2] for lay in layers), 8 * max(lay[1] for lay in layers)
    h, w = differs.shape
    rows, cols = -(-h // mh), -(-w // mw)
    padded = np.zeros((rows * mh, cols * mw), dtype=bool)
    padded[:h, :w] = differs
    per_mcu = padded.reshape(rows, mh, cols, mw).any(axis=(1, 3)).reshape(-1)
    if not per_mcu.any():
        return differs
    tail = np.arange(per_mcu.size) >= np.argmax(per_mcu)
    return np.repeat(np.repeat(tail.reshape(rows, cols), mh, axis=0), mw, axis=1)[:h, :w]


def _to_arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels (1 or 3 uint8 channels) and the alpha == 0 mask of a loaded image."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"))
        mask = rgba[..., 3] == 0
        pixels = rgba[..., :1] if img.mode in ("LA", "La") else rgba[..., :3]
        return np.ascontiguousarray(pixels), (mask if mask.any() else None)
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return (np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))[..., None], None
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"))[..., None], None
    return np.asarray(img.convert("RGB")), None
