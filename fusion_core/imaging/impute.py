"""Missing-pixel imputation for image batches.

One entry point, ``impute(images, mask, method="auto")``. Images are an
``(N, H, W, C)`` batch, the mask an ``(N, H, W)`` bool array (True = missing
in every channel). The result is float32; known pixels keep their input
values exactly. An image with no known pixel gets the mid value of the input
range (127.5 for integers, 0.5 for floats), is logged, and is recorded as
``FALLBACK`` by ``methods_used``.

Methods (all vectorized over the batch except the OpenCV references):

* ``mean``: per-image, per-channel mean of the known pixels.
* ``nearest``: value of the nearest known pixel (Euclidean distance transform).
* ``normalized_convolution``: Gaussian-weighted average of known pixels,
  sigma doubling from 1 until every hole is covered.
* ``harmonic``: discrete Laplace equation (5-point stencil, mirrored edges)
  solved directly (sparse LU) for all images of the batch at once.
* ``biharmonic``: the thin-plate analogue: minimizes the squared Laplacian
  over every pixel whose stencil touches a hole (normal equations, sparse LU),
  clipped to each image's known range per channel; matches scikit-image's
  ``inpaint_biharmonic`` on CIFAR-10 (see docs/benchmarks.md, Imputation).
* ``telea``, ``navier_stokes``: OpenCV's ``cv2.inpaint`` (radius 3), image by image.
* ``auto`` (default): per image, from the mask's structure (see ``pick_method``).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import linalg as sla

logger = logging.getLogger(__name__)

METHODS = ("mean", "nearest", "normalized_convolution", "harmonic", "biharmonic", "telea", "navier_stokes")
CHOICES = ("auto",) + METHODS
FALLBACK = "fill_value"
DEEP_HOLE_LIMIT = 0.1
_DEN_EPS = 1e-3


def _mid_value(dtype: np.dtype) -> float:
    """Mid value of the nominal range of ``dtype`` (0.5 for float/bool)."""
    if np.issubdtype(dtype, np.integer):
        return (float(np.iinfo(dtype).min) + float(np.iinfo(dtype).max)) / 2.0
    return 0.5


def deep_fraction(mask: np.ndarray) -> np.ndarray:
    """Per image, the fraction of missing pixels whose four neighbours are all missing too.

    Scattered pixels, thin lines and small specks score near 0; blocks and very dense masks score high.
    Pixels beyond the image edge count as missing.
    """
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    deep = (mask & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])
    return deep.sum(axis=(1, 2)) / np.maximum(mask.sum(axis=(1, 2)), 1)


def pick_method(mask: np.ndarray) -> np.ndarray:
    """The ``auto`` rule: per image, ``biharmonic`` for thin holes, ``harmonic`` for deep ones.

    A mask is deep when more than ``DEEP_HOLE_LIMIT`` of its missing pixels have no known
    4-neighbour. On thin holes (scattered pixels, lines, specks) biharmonic is the more accurate
    fill; on deep ones (blocks, most pixels missing) harmonic comes close at a fraction of the
    cost. The limit and the rule were chosen with ``bench/impute.py``; docs/benchmarks.md's imputation
    section has its figures.

    Returns:
        (N,) array of method names.
    """
    return np.where(deep_fraction(mask) > DEEP_HOLE_LIMIT, "harmonic", "biharmonic").astype(object)


def methods_used(mask: np.ndarray, method: str = "auto") -> list[str | None]:
    """Per image, the method ``impute`` applies: None without holes, ``FALLBACK`` if all missing."""
    mask = np.asarray(mask, dtype=bool)
    names = pick_method(mask) if method == "auto" else np.full(len(mask), method, dtype=object)
    names[mask.all(axis=(1, 2))] = FALLBACK
    names[~mask.any(axis=(1, 2))] = None
    return names.tolist()


def _fill_mean(x: np.ndarray, miss: np.ndarray) -> np.ndarray:
    known = (~miss)[..., None]
    count = np.maximum(known.sum(axis=(1, 2)), 1)
    mean = (x * known).sum(axis=(1, 2)) / count
    return np.broadcast_to(mean[:, None, None, :], x.shape)


def _fill_nearest(x: np.ndarray, miss: np.ndarray) -> np.ndarray:
    # A large sampling step on the batch axis keeps each search inside its
    # own image (every image here has at least one known pixel).
    _, h, w = miss.shape
    idx = ndimage.distance_transform_edt(miss, sampling=(h + w + 1.0, 1.0, 1.0),
                                         return_distances=False, return_indices=True)
    return x[idx[0], idx[1], idx[2]]


def _fill_normalized_convolution(x: np.ndarray, miss: np.ndarray) -> np.ndarray:
    known = (~miss).astype(np.float64)
    out = x.copy()
    todo = miss.copy()
    sigma = 1.0
    while todo.any():  # terminates: at sigma ~ image size every pixel sees a known one
        den = ndimage.gaussian_filter(known, sigma=(0, sigma, sigma))
        num = ndimage.gaussian_filter(x * known[..., None], sigma=(0, sigma, sigma, 0))
        ok = todo & (den > _DEN_EPS)
        out[ok] = num[ok] / den[ok][:, None]
        todo &= ~ok
        sigma *= 2.0
    return out


def _stencil(order: int) -> list[tuple[int, int, object]]:
    """Offsets and coefficients of the Laplacian (order 1) or its square (order 2) at a pixel.

    A coefficient is a number or a function of the two pixels' neighbour counts (dp, dq).
    """
    near = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if order == 1:
        return [(0, 0, lambda dp, dq: dp)] + [(dy, dx, -1.0) for dy, dx in near]
    return ([(0, 0, lambda dp, dq: dp * dp + dp)] + [(dy, dx, lambda dp, dq: -(dp + dq)) for dy, dx in near]
            + [(dy, dx, 2.0) for dy in (-1, 1) for dx in (-1, 1)]
            + [(2 * dy, 2 * dx, 1.0) for dy, dx in near])


def _solve_laplace(x: np.ndarray, miss: np.ndarray, order: int) -> np.ndarray:
    """Solve L^order u = 0 at the missing pixels, known pixels fixed (sparse LU, the whole batch at once).

    ``order`` 1 is the harmonic fill; 2 minimizes the squared Laplacian (biharmonic fill).

    Returns:
        (U, C) values of the missing pixels, in ``np.nonzero(miss)`` order.
    """
    n, h, w, c = x.shape
    pw = w + 4
    unknown = np.flatnonzero(miss)
    pos = np.full((n, h + 4, pw), -1, dtype=np.int64)  # unknown index, -1 known or outside
    pos[:, 2:-2, 2:-2][miss] = np.arange(unknown.size)
    pos = pos.reshape(-1)
    deg = np.zeros((h + 4, pw))  # in-image neighbours, 0 outside
    deg[2:-2, 2:-2] = 4.0
    deg[2:-2, (2, -3)] -= 1.0
    deg[(2, -3), 2:-2] -= 1.0
    deg = deg.reshape(-1)
    xk = np.zeros((n, h + 4, pw, c))  # known values, 0 at holes and outside
    xk[:, 2:-2, 2:-2] = x
    xk[:, 2:-2, 2:-2][miss] = 0.0
    xk = xk.reshape(-1, c)
    ni, yi, xi = np.nonzero(miss)
    at = (yi + 2) * pw + xi + 2
    flat = ni * ((h + 4) * pw) + at
    dp = deg[at]
    stencil = _stencil(order)
    cols = np.empty((unknown.size, len(stencil)), dtype=np.int64)
    vals = np.empty((unknown.size, len(stencil)))
    rhs = np.zeros((unknown.size, c))  # minus the known pixels' part of the stencil
    for j, (dy, dx, coef) in enumerate(stencil):
        off = dy * pw + dx
        cols[:, j] = pos[flat + off]
        vals[:, j] = coef(dp, deg[at + off]) if callable(coef) else coef
        if off:
            rhs -= vals[:, j, None] * xk[flat + off]
    link = cols >= 0
    # Symmetric, so these CSR rows are also its CSC columns. Unknowns are numbered image by image,
    # row by row: a banded, block-diagonal matrix that factors faster in this natural order than
    # after COLAMD.
    a = sparse.csc_matrix((vals[link], cols[link], np.concatenate([[0], np.cumsum(link.sum(axis=1))])),
                          shape=(unknown.size, unknown.size))
    a.sort_indices()
    return sla.splu(a, permc_spec="NATURAL", options={"SymmetricMode": True}).solve(rhs)


def _fill_harmonic(x: np.ndarray, miss: np.ndarray) -> np.ndarray:
    """Laplacian = 0 at every missing pixel."""
    out = x.copy()
    out[miss] = _solve_laplace(x, miss, 1)
    return out


def _fill_biharmonic(x: np.ndarray, miss: np.ndarray) -> np.ndarray:
    """Least squares on the Laplacian, clipped to each image's known range per channel."""
    known = ~miss[..., None]
    lo = np.min(x, axis=(1, 2), where=known, initial=np.inf)
    hi = np.max(x, axis=(1, 2), where=known, initial=-np.inf)
    image = np.nonzero(miss)[0]
    out = x.copy()
    out[miss] = np.clip(_solve_laplace(x, miss, 2), lo[image], hi[image])
    return out


def _fill_opencv(x: np.ndarray, miss: np.ndarray, flag_name: str) -> np.ndarray:
    import cv2  # optional dependency, only for the reference methods

    flag = getattr(cv2, flag_name)
    hole = miss.astype(np.uint8)
    out = np.empty_like(x)
    as_uint8 = np.array_equal(x, np.clip(np.rint(x), 0, 255)) and x.shape[-1] in (1, 3)
    for i in range(len(x)):
        if as_uint8:  # OpenCV's native case: 8-bit, 1 or 3 channels
            out[i] = cv2.inpaint(x[i].astype(np.uint8), hole[i], 3, flag).reshape(x.shape[1:])
        else:  # 32-bit float, one channel at a time
            for ch in range(x.shape[-1]):
                out[i, ..., ch] = cv2.inpaint(x[i, ..., ch].astype(np.float32), hole[i], 3, flag)
    return out


def _fill(x: np.ndarray, miss: np.ndarray, method: str) -> np.ndarray:
    if method == "mean":
        return _fill_mean(x, miss)
    if method == "nearest":
        return _fill_nearest(x, miss)
    if method == "normalized_convolution":
        return _fill_normalized_convolution(x, miss)
    if method == "harmonic":
        return _fill_harmonic(x, miss)
    if method == "biharmonic":
        return _fill_biharmonic(x, miss)
    return _fill_opencv(x, miss, "INPAINT_TELEA" if method == "telea" else "INPAINT_NS")


def impute(images: np.ndarray, mask: np.ndarray, method: str = "auto") -> np.ndarray:
    """Fill missing pixels of an image batch.

    Args:
        images: (N, H, W, C) array of any numeric dtype.
        mask: (N, H, W) bool array, True where the pixel is missing.
        method: One of ``CHOICES``; ``auto`` picks per image with ``pick_method``.

    Returns:
        float32 (N, H, W, C) array; known pixels equal the input values.

    Raises:
        ValueError: On an unknown method or mismatched shapes.
    """
    if method not in CHOICES:
        raise ValueError(f"unknown imputation method {method!r}; allowed: {', '.join(CHOICES)}")
    images, mask = np.asarray(images), np.asarray(mask, dtype=bool)
    if images.ndim != 4 or mask.shape != images.shape[:3]:
        raise ValueError(f"expected images (N,H,W,C) and mask (N,H,W), got {images.shape}, {mask.shape}")
    out = images.astype(np.float32)  # always a copy
    names = np.array(methods_used(mask, method), dtype=object)
    empty = names == FALLBACK
    if empty.any():
        out[empty] = fallback = _mid_value(images.dtype)
        logger.warning("%d image(s) fully missing; filled with %g", int(empty.sum()), fallback)
    for name in sorted({n for n in names if n not in (None, FALLBACK)}):
        sel = np.flatnonzero(names == name)
        miss = mask[sel]
        filled = _fill(images[sel].astype(np.float64), miss, name)
        part = out[sel]
        part[miss] = filled[miss]
        out[sel] = part
    return out


def psnr(reference, estimate, mask=None, data_range=255.0) -> float:
    """Peak signal-to-noise ratio in dB, over masked pixels (all if mask is None).

    Returns ``inf`` for a perfect match; raises ValueError if the mask selects nothing.
    """
    ref, est = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    if mask is not None:
        sel = np.asarray(mask, dtype=bool)
        ref, est = ref[sel], est[sel]
    if ref.size == 0:
        raise ValueError("psnr: mask selects no pixels")
    mse = float(np.mean((ref - est) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(data_range**2 / mse))
