"""Training batches from uint8 images: each worker's share of the rows, per-epoch order, flips and shifts, and
the patch-whitening filters of airbench's first layer (numpy only; no TensorFlow here)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FLIPS = ("none", "random", "alternating")


def scale_pixels(images: np.ndarray, norm: dict | None) -> np.ndarray:
    """uint8 pixels as the model's first layer sees them: [0, 1], or standardized with ``norm``."""
    x = images.astype(np.float32)
    if norm is None:
        return x / 255.0
    return (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)


def whitening_filters(images: np.ndarray, norm: dict | None, size: int = 2, eps: float = 5e-4) -> np.ndarray:
    """Conv filters (size, size, C, 2 x size x size x C) that whiten the images' size x size patches.

    The eigenvectors of the patches' (uncentred) covariance, each divided by the square root of its
    eigenvalue plus ``eps`` times the patches' mean variance (airbench's ``eps`` on standardized pixels,
    whatever the input scaling), largest first, followed by their negatives (so that a GELU after the
    layer keeps both signs).
    """
    channels = images.shape[-1]
    dim = size * size * channels
    cov, total, count = np.zeros((dim, dim)), np.zeros(dim), 0
    for start in range(0, len(images), 256):
        x = scale_pixels(images[start:start + 256], norm)
        # (N, H', W', C, size, size) -> rows in the kernel's (row, column, channel) order
        patches = sliding_window_view(x, (size, size), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3).reshape(-1, dim)
        cov += patches.T.astype(np.float64) @ patches
        total += patches.sum(axis=0)
        count += len(patches)
    cov, mean = cov / max(count, 1), total / max(count, 1)
    variance = max(float(np.mean(np.diag(cov) - mean**2)), 1e-12)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    filters = vectors / np.sqrt(np.maximum(values, 0) + eps * variance)
    return np.concatenate([filters, -filters], axis=1).reshape(size, size, channels, 2 * dim).astype(np.float32)


def translate(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Each image shifted by up to ``pad`` pixels in each direction, edges filled by reflection."""
    if pad <= 0:
        return images
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    shifts = rng.integers(0, 2 * pad + 1, size=(n, 2))
    out = np.empty_like(images)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            chosen = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[chosen] = padded[chosen, dy:dy + h, dx:dx + w]
    return out


def flip_mask(n: int, flip: str, seed: int, epoch: int) -> np.ndarray:
    """Which of ``n`` images to mirror this epoch.

    ``random``: a fresh coin per image and epoch. ``alternating`` (airbench): a coin per image drawn
    once, inverted every other epoch, so that each image is seen both ways in any two epochs.
    """
    if flip == "none":
        return np.zeros(n, bool)
    if flip == "random":
        return np.random.default_rng([seed, epoch, 1]).random(n) < 0.5
    if flip == "alternating":
        return (np.random.default_rng([seed, 2]).random(n) < 0.5) ^ bool(epoch % 2)
    raise ValueError(f"flip: unknown {flip!r} (allowed: {', '.join(FLIPS)})")


def epoch_batches(x: np.ndarray, y: np.ndarray, batch: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                  flip: str = "none", pad: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch over in-memory images: a fresh random order, flips and shifts; the last partial batch is
    dropped when shuffling (so every worker steps the same number of times), kept otherwise."""
    n = len(y)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    flips = flip_mask(n, flip, seed, epoch)
    stop = n - n % batch if shuffle and n >= batch else n
    for start in range(0, stop, batch):
        index = order[start:start + batch]
        yield augment(x[index], flips[index], pad, rng), y[index]


def augment(images: np.ndarray, mirrored: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """A batch with the ``mirrored`` images flipped left to right, then shifted (``translate``); a new array."""
    images = images.copy()
    images[mirrored] = images[mirrored, :, ::-1]
    return translate(images, pad, rng)


def grouped(batches: Iterator[tuple[np.ndarray, np.ndarray]], size: int = 16
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive batches of equal length stacked ``size`` at a time: (k, batch, ...) image and label arrays."""
    images, labels = [], []
    for x, y in batches:
        if images and (len(images) == size or len(y) != len(labels[0])):
            yield np.stack(images), np.stack(labels)
            images, labels = [], []
        images.append(x)
        labels.append(y)
    if images:
        yield np.stack(images), np.stack(labels)


def share_rows(counts: list[int], workers: int, seed: int) -> list[list[tuple[int, int, int]]]:
    """Each worker's equal share of the rows of shards holding ``counts`` rows: lists of pieces
    ``(shard index, first row, end row)``.

    The shards are taken in a seeded random order (shards often follow the source's order, class by class)
    and cut into ``workers`` equal runs of rows; the last ``sum(counts) % workers`` rows are left out, so that
    every worker steps the same number of times.
    """
    each = sum(counts) // workers
    order = np.random.default_rng([seed, 3]).permutation(len(counts))
    shares, share, room = [], [], each
    for shard in order:
        start, count = 0, counts[shard]
        while count - start > 0 and len(shares) < workers:
            take = min(room, count - start)
            if take:
                share.append((int(shard), start, start + take))
            start, room = start + take, room - take
            if room == 0:
                shares.append(share)
                share, room = [], each
    return shares + [[] for _ in range(workers - len(shares))]


def epoch_steps(rows: int, batch: int) -> int:
    """Optimizer steps in one ``epoch_batches`` pass over ``rows`` images."""
    return max(1, rows // batch)
