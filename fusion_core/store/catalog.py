"""``Store``: the catalog and the result tables of one store, in SQL through SQLAlchemy.

The catalog records runs and their stages (``runs``), dataset versions with their shard manifests
(``versions``), image sources and quarantine (``sources``), models with their promotions (``models``), and
people's decisions about images (``decisions``). Result tables (predictions, cluster assignments and
summaries, findings, ``results``) are what people query. A dataset version exists only once its manifest is
committed here. ``Store`` joins those parts over one database and one
store root, and says where the store's files lie.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import sqlalchemy as sa

from fusion_core import uri
from fusion_core.config import Settings
from fusion_core.store.common import retrying
from fusion_core.store.decisions import DecisionCatalog
from fusion_core.store.migrations import migrate
from fusion_core.store.models import ModelCatalog
from fusion_core.store.results import ResultTables
from fusion_core.store.runs import RunCatalog
from fusion_core.store.sources import SourceCatalog
from fusion_core.store.tables import meta
from fusion_core.store.versions import VersionCatalog

_migrated: set[str] = set()  # catalogs this process has brought to the current schema


class Store(RunCatalog, VersionCatalog, SourceCatalog, ModelCatalog, ResultTables, DecisionCatalog):
    """Catalog access for one store root (artifacts) and database (catalog)."""

    def __init__(self, root: str, db_url: str | None = None, sqlite_lock_wait_s: float = 30.0):
        self.root = root if uri.is_uri(root) else str(Path(root).resolve())
        if db_url is None:
            if uri.is_uri(root):
                raise ValueError("store.db must be set when store.root is a URI")
            Path(self.root).mkdir(parents=True, exist_ok=True)
            db_url = f"sqlite:///{Path(self.root) / 'catalog.db'}"
        self.engine = sa.create_engine(db_url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", partial(_sqlite_pragmas, round(sqlite_lock_wait_s * 1000)))
        self._migrate_once(db_url)

    def _migrate_once(self, db_url: str) -> None:
        """Create or migrate the catalog the first time this process opens it (a new SQLite file: again)."""
        url = sa.engine.make_url(db_url)
        fresh_file = url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).exists())
        if db_url in _migrated and not fresh_file:
            return
        retrying(lambda: migrate(self.engine))
        _migrated.add(db_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(settings.store.root, settings.store.db, settings.store.sqlite_lock_wait_s)

    @classmethod
    def open_existing(cls, settings: Settings) -> "Store":
        """The store that ``settings`` name, if one exists there; unlike ``Store(...)`` it never creates one.

        Raises:
            StoreNotFoundError: no catalog at the store root, or a catalog database without Fusion's tables.
        """
        root, db_url = settings.store.root, settings.store.db
        if db_url is None and not uri.is_uri(root):
            if not (Path(root) / "catalog.db").is_file():
                raise StoreNotFoundError(f"no Fusion store at {Path(root).resolve()} (it has no catalog.db; "
                                         f"`fusion run ingest` or `fusion demo` makes one)")
        elif db_url is not None:
            engine = sa.create_engine(db_url)
            try:
                found = sa.inspect(engine).has_table(meta.name)
            finally:
                engine.dispose()
            if not found:
                raise StoreNotFoundError(f"no Fusion store at {root} (the catalog "
                                         f"{engine.url.render_as_string(hide_password=True)} has no Fusion tables)")
        return cls.from_settings(settings)

    def reopen_args(self) -> tuple[str, str]:
        """``(root, database URL with its password)``: what another process passes to ``Store`` to open this one."""
        return self.root, self.engine.url.render_as_string(hide_password=False)

    def path(self, *parts: str) -> str:
        """An artifact location under the store root."""
        return uri.join(self.root, *parts)

    def relative(self, path: str) -> str:
        """``path`` as the catalog keeps it: relative to the store root when it lies under it (so a store
        copied, moved or restored elsewhere is the same store), as it is otherwise."""
        prefix = self.root.rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else path

    def located(self, path: str) -> str:
        """Where a path the catalog keeps lies now: a relative one under this store's root, others as they are."""
        return path if uri.is_uri(path) or path.startswith("/") else self.path(path)


class StoreNotFoundError(LookupError):
    """No Fusion store where one was named."""



def _sqlite_pragmas(lock_wait_ms: int, dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={lock_wait_ms}")
    cursor.execute("PRAGMA case_sensitive_like=ON")  # as LIKE is on PostgreSQL (path globs)
    cursor.close()
