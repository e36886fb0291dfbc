"""Missing-pixel imputation for image batches (pure numpy/scipy).

All methods take an ``(N, H, W, C)`` batch and an ``(N, H, W)`` bool mask
(True = missing in every channel) and return float32 images in which known
pixels are the input values and missing pixels are filled. An image with no
known pixel is filled with the mid value of the input range (127.5 for uint8,
0.5 for float input) and a warning is logged.
"""

import logging

import numpy as np
from scipy import ndimage, sparse

logger = logging.getLogger(__name__)

METHODS = ("mean", "nearest", "normalized_convolution", "harmonic")
_DEN_EPS = 1e-3
_MAX_ITER = 500


def _mid_value(dtype: np.dtype) -> float:
    """Mid value of the nominal range of ``dtype`` (0.5 for float/bool)."""
    if np.issubdtype(dtype, np.integer):
        return (float(np.iinfo(dtype).min) + float(np.iinfo(dtype).max)) / 2.0
    return 0.5


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
    while todo.any() and sigma <= 4.0 * max(miss.shape[1:]):
        den = ndimage.gaussian_filter(known, sigma=(0, sigma, sigma))
        num = ndimage.gaussian_filter(x * known[..., None], sigma=(0, sigma, sigma, 0))
        ok = todo & (den > _DEN_EPS)
        out[ok] = num[ok] / den[ok][:, None]
        todo &= ~ok
        sigma *= 2.0
    if todo.any():  # unreachable for images with a known pixel; stay safe
        out[todo] = _fill_mean(x, miss)[todo]
    return out


def _fill_harmonic(x: np.ndarray, miss: np.ndarray, tol: float) -> np.ndarray:
    """Discrete Laplace solve (4-neighbour, edge replication) by Jacobi-PCG."""
    n, h, w, c = x.shape
    flat = x.reshape(-1, c)
    idx = np.flatnonzero(miss)
    pos = np.full(miss.size, -1, dtype=np.int64)
    pos[idx] = np.arange(idx.size)
    iy, ix = (idx // w) % h, idx % w
    base = idx - iy * w - ix
    deg = np.zeros(idx.size)
    b = np.zeros((idx.size, c))
    rows, cols = [], []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        yy, xx = np.clip(iy + dy, 0, h - 1), np.clip(ix + dx, 0, w - 1)
        real = (yy != iy) | (xx != ix)  # a replicated edge neighbour is the pixel itself
        nb = base + yy * w + xx
        deg += real
        unk = real & (pos[nb] >= 0)
        kn = real & ~unk
        b[kn] += flat[nb[kn]]
        rows.append(np.flatnonzero(unk))
        cols.append(pos[nb[unk]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    a = sparse.diags(deg) - sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(idx.size,) * 2)
    u = _fill_normalized_convolution(x, miss).reshape(-1, c)[idx]
    r = b - a @ u
    z = r / deg[:, None]
    p, rz = z.copy(), np.einsum("ij,ij->j", r, z)
    for it in range(_MAX_ITER):
        if np.abs(z).max() < tol:  # = max change a Jacobi sweep would make
            break
        ap = a @ p
        pap = np.einsum("ij,ij->j", p, ap)
        alpha = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
        u += alpha * p
        r -= alpha * ap
        z = r / deg[:, None]
        rz_new = np.einsum("ij,ij->j", r, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p, rz = z + beta * p, rz_new
    else:
        logger.warning("harmonic fill did not converge in %d iterations", _MAX_ITER)
    logger.debug("harmonic fill: %d unknowns, %d iterations", idx.size, it)
    out = flat.copy()
    out[idx] = u
    return out.reshape(x.shape)


def impute_missing(images: np.ndarray, mask: np.ndarray, method: str = "harmonic") -> np.ndarray:
    """Fill missing pixels of an image batch.

    Args:
        images: (N, H, W, C) array of any numeric dtype.
        mask: (N, H, W) bool array, True where the pixel is missing.
        method: One of ``METHODS``.

    Returns:
        float32 (N, H, W, C) array; known pixels equal the input values.

    Raises:
        ValueError: On an unknown method or mismatched shapes.
    """
    if method not in METHODS:
        raise ValueError(f"unknown imputation method {method!r}; allowed: {', '.join(METHODS)}")
    images, mask = np.asarray(images), np.asarray(mask, dtype=bool)
    if images.ndim != 4 or mask.shape != images.shape[:3]:
        raise ValueError(f"expected images (N,H,W,C) and mask (N,H,W), got {images.shape}, {mask.shape}")
    out = images.astype(np.float32)  # always a copy
    if not mask.any():
        return out
    empty = mask.all(axis=(1, 2))
    if empty.any():
        out[empty] = fallback = _mid_value(images.dtype)
        logger.warning("%d image(s) fully missing; filled with %g", int(empty.sum()), fallback)
    miss = mask & ~empty[:, None, None]
    if not miss.any():
        return out
    x = images.astype(np.float64)
    if method == "mean":
        filled = _fill_mean(x, miss)
    elif method == "nearest":
        filled = _fill_nearest(x, miss)
    elif method == "normalized_convolution":
        filled = _fill_normalized_convolution(x, miss)
    else:
        known = x[~mask]
        span = float(known.max() - known.min()) if known.size else 0.0
        tol = 1e-3 * max(span, 1e-6) / 255.0
        filled = _fill_harmonic(x, miss, tol)
    out[miss] = filled[miss]
    return out


def corrupt_random(shape_nhw: tuple, fraction: float, seed: int) -> np.ndarray:
    """Seeded (N, H, W) bool mask with ``round(fraction * H * W)`` missing pixels per image."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n, h, w = shape_nhw
    k = int(round(fraction * h * w))
    ranks = np.random.default_rng(seed).random((n, h * w)).argsort(axis=1).argsort(axis=1)
    return (ranks < k).reshape(n, h, w)


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
