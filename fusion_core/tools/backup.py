"""A copy of a store that is safe to take while runs write to it.

The SQLite catalog is copied through SQLite's online backup, first, and the files after it: the copy's catalog
is one committed state, and every file it names was written before it committed. A plain file copy of a live
catalog can miss the commits still in its write-ahead log, and one made by a process that has the catalog
open releases that process's SQLite locks (closing any descriptor of a file drops a process's POSIX locks on
it), after which another process's writes to the catalog can be lost.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from fusion_core import uri
from fusion_core.store import Store

CATALOG_FILE = "catalog.db"


def copy_store(store: Store, dest: str) -> Path:
    """Copy ``store`` (a local root) to the new folder ``dest``; returns it. A SQLite catalog becomes the copy's
    ``catalog.db`` (where a store keeps it by default); a PostgreSQL one is not copied: the copy opens with
    the same ``store.db``, or a restored dump of it.

    Raises:
        ValueError: the store's root is an object-store URI (copy it with the object store's tools).
        FileExistsError: ``dest`` exists.
    """
    if uri.is_uri(store.root):
        raise ValueError(f"{store.root} is on an object store: copy it with that store's tools "
                         f"(e.g. aws s3 sync) and the catalog with a database dump")
    target = Path(dest).resolve()
    if target.exists():
        raise FileExistsError(f"{target} already exists: name a new folder")
    root = Path(store.root)
    target.mkdir(parents=True)
    if store.engine.dialect.name == "sqlite":
        raw = store.engine.raw_connection()
        copy = sqlite3.connect(target / CATALOG_FILE)
        try:
            raw.driver_connection.backup(copy)
        finally:
            copy.close()
            raw.close()

    def catalog_files(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith(CATALOG_FILE)] if Path(folder) == root else []

    shutil.copytree(root, target, ignore=catalog_files, dirs_exist_ok=True)
    return target
