"""Seeded missing-pixel masks for evaluating imputation.

Every function returns an ``(N, H, W)`` bool mask (True = missing) and is
reproducible from its ``seed``. ``PATTERNS`` names the patterns the
imputation benchmark runs; ``corrupt_pattern`` builds one by name.
"""

from __future__ import annotations

import numpy as np

PATTERNS = ("random10", "random30", "random50", "random80", "lines", "blocks", "salt_pepper")


def corrupt_random(shape_nhw: tuple, fraction: float, seed: int) -> np.ndarray:
    """Uniform random pixels: exactly ``round(fraction * H * W)`` missing per image."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n, h, w = shape_nhw
    k = int(round(fraction * h * w))
    ranks = np.random.default_rng(seed).random((n, h * w)).argsort(axis=1).argsort(axis=1)
    return (ranks < k).reshape(n, h, w)


def corrupt_lines(shape_nhw: tuple, n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    """Dead rows and columns: ``n_rows`` distinct full rows and ``n_cols`` full columns per image."""
    n, h, w = shape_nhw
    if not (0 <= n_rows <= h and 0 <= n_cols <= w):
        raise ValueError(f"cannot kill {n_rows} rows / {n_cols} columns of a {h}x{w} image")
    rng = np.random.default_rng(seed)
    rows = rng.random((n, h)).argsort(axis=1) < n_rows
    cols = rng.random((n, w)).argsort(axis=1) < n_cols
    return rows[:, :, None] | cols[:, None, :]


def corrupt_blocks(shape_nhw: tuple, n_blocks: int, min_size: int, max_size: int, seed: int) -> np.ndarray:
    """Occlusions: ``n_blocks`` axis-aligned rectangles per image, sides in [min_size, max_size]."""
    n, h, w = shape_nhw
    if not 1 <= min_size <= max_size <= min(h, w):
        raise ValueError(f"block sides must satisfy 1 <= {min_size} <= {max_size} <= {min(h, w)}")
    rng = np.random.default_rng(seed)
    bh = rng.integers(min_size, max_size + 1, (n, n_blocks))
    bw = rng.integers(min_size, max_size + 1, (n, n_blocks))
    y0 = (rng.random((n, n_blocks)) * (h - bh + 1)).astype(int)
    x0 = (rng.random((n, n_blocks)) * (w - bw + 1)).astype(int)
    yy, xx = np.arange(h)[None, None, :, None], np.arange(w)[None, None, None, :]
    inside = ((yy >= y0[..., None, None]) & (yy < (y0 + bh)[..., None, None])
              & (xx >= x0[..., None, None]) & (xx < (x0 + bw)[..., None, None]))
    return inside.any(axis=1)


def corrupt_salt_pepper(shape_nhw: tuple, density: float, max_speck: int, seed: int) -> np.ndarray:
    """Salt-and-pepper specks: about ``density`` of the pixels start a square speck of side 1..``max_speck``."""
    n, h, w = shape_nhw
    if not 0.0 <= density <= 1.0 or max_speck < 1:
        raise ValueError(f"need density in [0, 1] and max_speck >= 1, got {density}, {max_speck}")
    rng = np.random.default_rng(seed)
    seeds = rng.random((n, h, w)) < density
    side = rng.integers(1, max_speck + 1, (n, h, w))
    mask = np.zeros_like(seeds)
    for dy in range(max_speck):  # a speck covers side x side pixels down and right of its seed
        for dx in range(max_speck):
            grow = seeds & (side > max(dy, dx))
            mask[:, dy:, dx:] |= grow[:, :h - dy, :w - dx]
    return mask


def corrupt_pattern(pattern: str, shape_nhw: tuple, seed: int) -> np.ndarray:
    """The benchmark's mask for a named pattern (see ``PATTERNS``), scaled to the image size.

    ``randomXX``: XX% uniform random pixels; ``lines``: H/16 dead rows and W/16 dead columns;
    ``blocks``: two occlusions with sides H/8..3H/8 (4..12 px on 32x32); ``salt_pepper``:
    3% speck seeds, specks up to 2x2 (about 10% of the pixels).
    """
    _, h, w = shape_nhw
    if pattern.startswith("random") and pattern[6:].isdigit():
        return corrupt_random(shape_nhw, int(pattern[6:]) / 100.0, seed)
    if pattern == "lines":
        return corrupt_lines(shape_nhw, max(1, h // 16), max(1, w // 16), seed)
    if pattern == "blocks":
        side = min(h, w)
        return corrupt_blocks(shape_nhw, 2, max(1, side // 8), max(1, 3 * side // 8), seed)
    if pattern == "salt_pepper":
        return corrupt_salt_pepper(shape_nhw, 0.03, 2, seed)
    raise ValueError(f"unknown mask pattern {pattern!r}; allowed: {', '.join(PATTERNS)}")
