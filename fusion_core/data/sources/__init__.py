"""Source kinds: what ingest reads, as a stream of items.

A source is a folder tree, a tar / tar.gz / zip archive, a CIFAR-10 or
CIFAR-100 batch directory (python-pickle or binary format), or a CSV / Parquet
manifest, given as a local path or a URI that ``fusion_core.uri`` opens
(``file://``, ``s3://``, ``gs://``, ...).

An item is ``(source, label, payload, mask, split)``: ``payload`` is a path or
URI to read, the encoded bytes of an archive member, or the uint8 (H, W, C)
pixels of a CIFAR record; ``mask`` is None or the path, URI or bytes of a mask
image; ``split`` is the ``train`` / ``val`` / ``test`` split the source gives
(split folders, CIFAR batch names, a manifest ``split`` column), else None.
Problems found while listing (symlink loops, unsafe archive members, unsafe
pickles, unreadable folders) are appended to a list as quarantine rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fusion_core import uri
from fusion_core.data.decode import QuarantineError
from fusion_core.data.sources.archive import archive_items
from fusion_core.data.sources.cifar import CIFAR_META, cifar_items
from fusion_core.data.sources.common import Item, quarantine_row
from fusion_core.data.sources.folder import MASK_SUFFIX, folder_items
from fusion_core.data.sources.manifest import MANIFEST_SUFFIXES, manifest_items

__all__ = ["Item", "MASK_SUFFIX", "quarantine_row", "read_bytes", "source_kind", "iter_items"]

log = logging.getLogger(__name__)


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a local file or of a URI.

    Raises:
        QuarantineError: ``too_large`` when the file holds more than ``max_bytes``.
        OSError: the file cannot be read.
    """
    try:
        return uri.read_bytes(path, max_bytes)
    except uri.FileTooLargeError as err:
        raise QuarantineError("too_large", f"{err.size} bytes exceeds ingest.max_file_mb ({max_bytes} bytes)") from None


def source_kind(source: str) -> str:
    """``folder``, ``cifar``, ``archive`` or ``manifest``.

    Raises:
        FileNotFoundError: the source does not exist.
    """
    kind = uri.kind(source)
    if kind == "missing":
        raise FileNotFoundError(f"source {source!r} does not exist")
    if kind == "dir":
        return "cifar" if set(uri.list_dir(source)) & CIFAR_META else "folder"
    if source.lower().endswith(MANIFEST_SUFFIXES):
        return "manifest"
    return "archive"


def iter_items(source: str, problems: list[dict], max_bytes: int = 2**31,
               manifest_paths_anywhere: bool = False) -> Iterator[Item]:
    """Every item of a source, in a stable order; listing problems are appended to ``problems``.

    Args:
        max_bytes: archive members larger than this are quarantined unread
            (files are checked where they are read).
        manifest_paths_anywhere: a manifest may name files outside its own folder.
    """
    kind = source_kind(source)
    log.info("ingest: %s source %s", kind, source)
    if kind == "archive":
        yield from archive_items(source, problems, max_bytes)
    elif kind == "manifest":
        yield from manifest_items(source, problems, manifest_paths_anywhere)
    else:
        yield from {"folder": folder_items, "cifar": cifar_items}[kind](source, problems)
