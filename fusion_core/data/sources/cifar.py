"""CIFAR sources: the images of a CIFAR-10 / CIFAR-100 batch directory, python-pickle or binary format."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator

import numpy as np

from fusion_core import uri
from fusion_core.data.sources.common import Item, quarantine_row
from fusion_core.data.sources.safe_pickle import load_pickle

_CIFAR_PY = {"batches.meta": ("label_names", "labels"), "meta": ("fine_label_names", "fine_labels")}
_CIFAR_BIN = {"batches.meta.txt": 1, "fine_label_names.txt": 2}  # label bytes per record
CIFAR_META = frozenset(_CIFAR_PY) | frozenset(_CIFAR_BIN)  # a folder holding one of these is a CIFAR source


def _key(d: dict, name: str):
    return d[name.encode()] if name.encode() in d else d[name]


def cifar_items(root: str, problems: list[dict]) -> Iterator[Item]:
    """Images of a CIFAR-10 / CIFAR-100 batch directory, python-pickle or binary format."""
    names = set(uri.list_dir(root))
    for meta, (names_key, labels_key) in _CIFAR_PY.items():
        if meta in names:
            yield from _cifar_python(root, meta, names_key, labels_key, sorted(names), problems)
            return
    for meta, label_bytes in _CIFAR_BIN.items():
        if meta in names:
            yield from _cifar_binary(root, meta, label_bytes, sorted(names), problems)
            return


def _cifar_python(root, meta, names_key, labels_key, names, problems) -> Iterator[Item]:
    classes = None
    for name in [meta] + [n for n in names if n.startswith(("data_batch", "test_batch")) or n in ("train", "test")]:
        path, split = uri.join(root, name), _cifar_split(name)
        data = uri.read_bytes(path)
        try:
            batch = load_pickle(data)
            if name == meta:
                classes = [c.decode() if isinstance(c, bytes) else c for c in _key(batch, names_key)]
                continue
            pixels = np.asarray(_key(batch, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = list(_key(batch, labels_key))
            if len(labels) != len(pixels):
                raise ValueError(f"{len(labels)} labels for {len(pixels)} images")
        except pickle.UnpicklingError as err:
            problems.append(quarantine_row(path, "unsafe_pickle", str(err), hashlib.sha256(data).hexdigest()))
            continue
        except (KeyError, ValueError, TypeError, EOFError, pickle.PickleError, MemoryError) as err:
            problems.append(quarantine_row(path, "decode_error", f"not a CIFAR batch: {type(err).__name__}: {err}",
                                           hashlib.sha256(data).hexdigest()))
            continue
        for i, (img, label) in enumerate(zip(pixels, labels)):
            yield f"{path}#{i}", _class_name(classes, label), np.ascontiguousarray(img), None, split


def _cifar_binary(root, meta, label_bytes, names, problems) -> Iterator[Item]:
    classes = [line.strip() for line in uri.read_bytes(uri.join(root, meta)).decode().splitlines() if line.strip()]
    record = label_bytes + 3072
    for name in [n for n in names if n.endswith(".bin")]:
        path, split = uri.join(root, name), _cifar_split(name)
        data = uri.read_bytes(path)
        if not data or len(data) % record:
            problems.append(quarantine_row(path, "decode_error",
                                           f"{len(data)} bytes is not a whole number of {record}-byte records",
                                           hashlib.sha256(data).hexdigest()))
            continue
        rows = np.frombuffer(data, np.uint8).reshape(-1, record)
        labels = rows[:, label_bytes - 1]  # CIFAR-100: coarse then fine label; the fine one is kept
        pixels = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for i, (img, label) in enumerate(zip(pixels, labels)):
            yield f"{path}#{i}", _class_name(classes, int(label)), np.ascontiguousarray(img), None, split


def _class_name(classes: list[str] | None, label) -> str:
    return classes[label] if classes and 0 <= label < len(classes) else str(label)


def _cifar_split(name: str) -> str | None:
    """``train`` for a ``data_batch_*`` / ``train`` batch, ``test`` for a ``test_batch`` / ``test`` one."""
    stem = name.removesuffix(".bin")
    if stem.startswith("data_batch") or stem == "train":
        return "train"
    return "test" if stem.startswith("test_batch") or stem == "test" else None
