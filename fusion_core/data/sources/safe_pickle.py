"""A pickle loader for plain data only (CIFAR python batches), refusing anything that could run code."""

from __future__ import annotations

import io
import pickle

import numpy as np


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data only: numbers, strings, bytes, lists, dicts and numeric numpy arrays."""

    def find_class(self, module, name):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                              ("numpy", "ndarray")}:
            return np.ndarray if name == "ndarray" else _reconstruct
        if (module, name) == ("numpy", "dtype"):
            return _dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("refusing to unpickle an ndarray subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _dtype(spec, align=False, copy=False):
    dt = np.dtype(spec)
    if dt.hasobject or dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"refusing to unpickle an array of {dt}")
    return dt


def _latin1(text, encoding="latin1"):
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing to encode with {encoding}")
    return text.encode("latin1")


def load_pickle(data: bytes):
    """Unpickle plain data (see ``_SafeUnpickler``).

    Raises:
        pickle.UnpicklingError: the pickle asks for anything but plain data.
        ValueError: the pickle is malformed (damaged opcodes fail in many ways: each becomes this).
    """
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError:
        raise
    except Exception as err:
        raise ValueError(f"malformed pickle: {type(err).__name__}: {err}") from None
