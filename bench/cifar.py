"""CIFAR-10 JPEGs for the benchmarks: unpack from ../shared if missing, load as arrays."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
DATASETS = HERE.parent.parent / "shared" / "datasets" / "cifar10-jpg"


def cifar_folder(path: Path, split: str) -> Path:
    """The unpacked CIFAR-10 JPEG folder ``path`` (``<split>/<class>/*.jpg``), unpacked from ../shared if missing."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(DATASETS / f"{split}.tar.gz") as tar:
            tar.extractall(path.parent, filter="data")
    return path


def load_cifar(path: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 (N, 32, 32, 3) images, int labels and class names, in sorted file order.

    With ``limit``, an evenly spaced subset covering every class.
    """
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    files = sorted(path.glob("*/*.jpg"))
    if limit and limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([classes.index(f.parent.name) for f in files])
    return images, labels, classes
