"""The current result of a dataset, readable without the catalog.

``<root>/datasets/<name>/current/`` holds the shards of the version the latest run used, and nothing
else, so DuckDB (``read_parquet('.../current/*.parquet')``), Spark, Ray Data or ``pyarrow.dataset``
read each image once. Files are hard links on a local disk and server-side copies on an object store,
assembled in a hidden folder and swapped in with two renames (file by file on an object store, which
cannot rename a folder); ``current/_VERSION`` names the version.
"""

from __future__ import annotations

import logging
import posixpath

from fusion_core import uri
from fusion_core.store import Store

log = logging.getLogger(__name__)

CURRENT = "current"
VERSION_FILE = "_VERSION"


def current_folder(store: Store, dataset: str) -> str:
    """Where the current result of ``dataset`` is."""
    return store.path("datasets", dataset, CURRENT)


def published_version(store: Store, dataset: str) -> int | None:
    """The version ``current/`` holds, or None."""
    marker = uri.join(current_folder(store, dataset), VERSION_FILE)
    return int(uri.read_bytes(marker)) if uri.is_file(marker) else None


def publish_current(store: Store, version: dict) -> None:
    """Make ``current/`` hold exactly the shards of a committed dataset version (nothing to do when it does)."""
    dataset = version["dataset"]
    if published_version(store, dataset) == version["version"]:
        return
    staged = store.path("datasets", dataset, f"_{CURRENT}-{version['version']}")
    uri.delete_dir(staged)
    for shard in version["shards"]:
        uri.link_or_copy(store.path(shard["path"]), uri.join(staged, posixpath.basename(shard["path"])))
    uri.write_bytes(uri.join(staged, VERSION_FILE), str(version["version"]).encode())
    current, retired = current_folder(store, dataset), store.path("datasets", dataset, f"_{CURRENT}-retired")
    uri.delete_dir(retired)
    if uri.kind(current) == "dir":
        uri.move(current, retired)
    uri.move(staged, current)
    uri.delete_dir(retired)
    log.info("%s v%d is the current result at %s", dataset, version["version"], current)
