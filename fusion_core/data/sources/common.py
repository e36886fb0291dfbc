"""What every source kind shares: the item type, quarantine rows and split names."""

from __future__ import annotations

Item = tuple  # (source: str, label: str | None, payload: str | bytes | np.ndarray, mask: str | bytes | None,
              #  split: str | None)

_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def quarantine_row(source: str, reason: str, message: str, content_hash: str = "") -> dict:
    """A quarantine row of the ingest stage (the run id is added when stored)."""
    return {"source": shown(source), "content_hash": content_hash, "stage": "ingest",
            "error_class": reason, "message": shown(message[:2000])}


def shown(name: str | None) -> str | None:
    """A file or folder name as stored and shown: bytes that are not UTF-8 (which Python reads as lone
    surrogates) written as ``\\xNN``, everything else verbatim."""
    if name is None:
        return None
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def split_name(name) -> str | None:
    """``train``, ``val`` or ``test`` for a split name in any case (``valid``, ``validation``: val), else None."""
    return _SPLITS.get(str(name).lower())
