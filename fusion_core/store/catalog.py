"""The catalog and the result tables, in SQL through SQLAlchemy.

The catalog records runs and their stages, dataset versions with their shard
manifests, image sources, models and quarantine. Result tables (predictions,
cluster assignments and summaries) are what people query. A dataset version
exists only once its manifest is committed here.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fusion_core.config import Settings

SCHEMA_VERSION = 3  # see MIGRATIONS

metadata = sa.MetaData()

runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("flow", sa.String(40), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("params", sa.JSON),
    sa.Column("summary", sa.JSON),
)
run_stages = sa.Table(
    "run_stages", metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.run_id"), primary_key=True),
    sa.Column("stage", sa.String(20), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("counts", sa.JSON),
    sa.Column("metrics", sa.JSON),
    sa.Column("outputs", sa.JSON),
    sa.Column("error", sa.Text),
)
dataset_versions = sa.Table(
    "dataset_versions", metadata,
    sa.Column("dataset", sa.String(20), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.String(40)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("num_rows", sa.BigInteger, nullable=False),
    sa.Column("key", sa.String(120), index=True),
    sa.Column("info", sa.JSON),
)
dataset_shards = sa.Table(
    "dataset_shards", metadata,
    sa.Column("dataset", sa.String(20), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("path", sa.String(300), primary_key=True),
    sa.Column("num_rows", sa.BigInteger, nullable=False),
)
image_sources = sa.Table(
    "image_sources", metadata,
    sa.Column("image_id", sa.String(64), primary_key=True),
    sa.Column("source", sa.String(1000), primary_key=True),
    sa.Column("run_id", sa.String(40)),
)
quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), index=True),
    sa.Column("source", sa.String(1000), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("error_class", sa.String(40), nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("source", "content_hash", "stage"),
)
models = sa.Table(
    "models", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), index=True),
    sa.Column("name", sa.String(40), nullable=False),
    sa.Column("path", sa.String(500), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("key", sa.String(120), index=True),
    sa.Column("dataset_version", sa.Integer),
    sa.Column("metrics", sa.JSON),
    sa.Column("config", sa.JSON),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("image_id", sa.String(64), primary_key=True, index=True),
    sa.Column("model_version", sa.Integer, nullable=False, index=True),
    sa.Column("label", sa.String(100)),
    sa.Column("predicted", sa.String(100), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("split", sa.String(8)),
    sa.Column("top_k", sa.JSON),
)
cluster_assignments = sa.Table(
    "cluster_assignments", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("image_id", sa.String(64), primary_key=True, index=True),
    sa.Column("cluster", sa.Integer, nullable=False),
    sa.Column("distance", sa.Float, nullable=False),
)
cluster_summaries = sa.Table(
    "cluster_summaries", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("cluster", sa.Integer, primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("top_label", sa.String(100)),
    sa.Column("purity", sa.Float),
    sa.Column("top_labels", sa.JSON),
    sa.Column("exemplars", sa.JSON),
    sa.Column("outliers", sa.JSON),
)
meta = sa.Table(
    "fusion_meta", metadata,
    sa.Column("key", sa.String(40), primary_key=True),
    sa.Column("value", sa.String(200)),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261126-201300-1a2b3c``."""
    return f"{_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class Store:
    """Catalog access for one store root (artifacts) and database (catalog)."""

    def __init__(self, root: str, db_url: str | None = None):
        self.root = root if "://" in root else str(Path(root).resolve())
        if db_url is None:
            if "://" in root:
                raise ValueError("store.db must be set when store.root is a URI")
            Path(self.root).mkdir(parents=True, exist_ok=True)
            db_url = f"sqlite:///{Path(self.root) / 'catalog.db'}"
        self.engine = sa.create_engine(db_url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        _retrying(lambda: migrate(self.engine))

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(settings.store.root, settings.store.db)

    def path(self, *parts: str) -> str:
        """An artifact location under the store root."""
        return "/".join([self.root.rstrip("/"), *parts])

    # runs -----------------------------------------------------------------
    def start_run(self, flow: str, params: dict[str, Any], run_id: str | None = None) -> str:
        """Open a run; database passwords in ``params`` are masked before they are stored."""
        run_id = run_id or new_run_id()
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(run_id=run_id, flow=flow, status="running",
                                              started_at=_now(), params=redact(params)))
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id)
                         .values(status=status, finished_at=_now(), summary=summary))

    def start_stage(self, run_id: str, stage: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(run_stages.delete().where(run_stages.c.run_id == run_id, run_stages.c.stage == stage))
            conn.execute(run_stages.insert().values(run_id=run_id, stage=stage, status="running",
                                                    started_at=_now()))

    def finish_stage(self, run_id: str, stage: str, status: str, counts=None, metrics=None,
                     outputs=None, error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(run_stages.update()
                         .where(run_stages.c.run_id == run_id, run_stages.c.stage == stage)
                         .values(status=status, finished_at=_now(), counts=counts,
                                 metrics=metrics, outputs=outputs, error=error))

    def list_runs(self, limit: int = 20) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    def get_run(self, run_id: str) -> dict | None:
        """The run and its stages, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
            if row is None:
                return None
            stages = conn.execute(sa.select(run_stages).where(run_stages.c.run_id == run_id)
                                  .order_by(run_stages.c.started_at))
            return {**row._mapping, "stages": [dict(s._mapping) for s in stages]}

    # datasets -------------------------------------------------------------
    def latest_version(self, dataset: str) -> dict | None:
        """The newest committed version of a dataset with its shard paths."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(dataset_versions).where(dataset_versions.c.dataset == dataset)
                               .order_by(dataset_versions.c.version.desc()).limit(1)).first()
            return self._with_shards(conn, row)

    def find_version(self, dataset: str, key: str) -> dict | None:
        """The newest committed version of a dataset derived under ``key``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(dataset_versions)
                               .where(dataset_versions.c.dataset == dataset, dataset_versions.c.key == key)
                               .order_by(dataset_versions.c.version.desc()).limit(1)).first()
            return self._with_shards(conn, row)

    @staticmethod
    def _with_shards(conn, row) -> dict | None:
        if row is None:
            return None
        shards = conn.execute(sa.select(dataset_shards.c.path, dataset_shards.c.num_rows)
                              .where(dataset_shards.c.dataset == row.dataset,
                                     dataset_shards.c.version == row.version)
                              .order_by(dataset_shards.c.path))
        return {**row._mapping, "shards": [dict(s._mapping) for s in shards]}

    def commit_version(self, dataset: str, shards: Sequence[dict], run_id: str | None,
                       key: str | None = None, info: dict | None = None,
                       sources: Iterable[dict] = (), conn=None) -> int:
        """Atomically commit a dataset version: its manifest and any image sources.

        Args:
            shards: ``[{"path": ..., "num_rows": ...}]`` relative to the store root, all written.
            sources: ``[{"image_id", "source"}]`` rows to record with the version.
        Returns:
            The new version number.
        """
        sources = list(sources)

        def commit() -> int:
            with self.engine.begin() as conn:
                current = conn.execute(sa.select(sa.func.max(dataset_versions.c.version))
                                       .where(dataset_versions.c.dataset == dataset)).scalar()
                version = (current or 0) + 1
                conn.execute(dataset_versions.insert().values(
                    dataset=dataset, version=version, run_id=run_id, created_at=_now(),
                    num_rows=sum(s["num_rows"] for s in shards), key=key, info=info))
                if shards:
                    conn.execute(dataset_shards.insert(), [{"dataset": dataset, "version": version, **s}
                                                           for s in shards])
                self._insert_new(conn, image_sources, [{**s, "run_id": run_id} for s in sources],
                                 ("image_id", "source"))
            return version

        return _retrying(commit)  # a concurrent commit may take the same number first

    def record_sources(self, sources: Iterable[dict], run_id: str | None) -> int:
        """Record more paths of already stored images."""
        with self.engine.begin() as conn:
            return self._insert_new(conn, image_sources, [{**s, "run_id": run_id} for s in sources],
                                    ("image_id", "source"))

    def known_image_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(image_sources.c.image_id).distinct()).scalars())

    def known_sources(self) -> set[tuple[str, str]]:
        with self.engine.connect() as conn:
            return {tuple(r) for r in conn.execute(sa.select(image_sources.c.image_id, image_sources.c.source))}

    # quarantine -----------------------------------------------------------
    def add_quarantine(self, run_id: str, rows: Sequence[dict]) -> int:
        """Record bad inputs once each; returns how many were new."""
        stamped = [{**r, "run_id": run_id, "created_at": _now()} for r in rows]
        with self.engine.begin() as conn:
            return self._insert_new(conn, quarantine, stamped, ("source", "content_hash", "stage"))

    def quarantine_rows(self, run_id: str | None = None) -> list[dict]:
        query = sa.select(quarantine).order_by(quarantine.c.id)
        if run_id:
            query = query.where(quarantine.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    @staticmethod
    def _insert_new(conn, table: sa.Table, rows: Sequence[dict], unique: tuple[str, ...]) -> int:
        """Insert rows whose unique columns are not present yet (portable upsert-ignore)."""
        if not rows:
            return 0
        cols = [table.c[name] for name in unique]
        existing = {tuple(r) for r in conn.execute(sa.select(*cols))}
        fresh, seen = [], set(existing)
        for row in rows:
            ident = tuple(row[name] for name in unique)
            if ident not in seen:
                seen.add(ident)
                fresh.append(row)
        if fresh:
            conn.execute(table.insert(), fresh)
        return len(fresh)

    # models ---------------------------------------------------------------
    def register_model(self, run_id: str, name: str, path: str, key: str, dataset_version: int,
                       metrics: dict, config: dict) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(models.insert().values(
                run_id=run_id, name=name, path=path, stage="challenger", key=key,
                dataset_version=dataset_version, metrics=metrics, config=config, created_at=_now()))
            return result.inserted_primary_key[0]

    def champion(self) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.stage == "champion")
                               .order_by(models.c.version.desc()).limit(1)).first()
            return dict(row._mapping) if row else None

    def get_model(self, version: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.version == version)).first()
            return dict(row._mapping) if row else None

    def find_model(self, key: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.key == key)
                               .order_by(models.c.version.desc()).limit(1)).first()
            return dict(row._mapping) if row else None

    def set_champion(self, version: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(models.update().where(models.c.stage == "champion").values(stage="archived"))
            conn.execute(models.update().where(models.c.version == version).values(stage="champion"))

    def list_models(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(models).order_by(models.c.version))]

    # results --------------------------------------------------------------
    def replace_results(self, table_name: str, run_id: str, rows: Sequence[dict]) -> None:
        """Write a run's result rows, replacing any earlier rows of that run in one transaction."""
        table = metadata.tables[table_name]
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.run_id == run_id))
            for start in range(0, len(rows), 5000):
                conn.execute(table.insert(), [{**r, "run_id": run_id} for r in rows[start:start + 5000]])

    def query(self, table_name: str, run_id: str, **equal: Any) -> list[dict]:
        """A run's rows of a result table, optionally filtered on column equality."""
        table = metadata.tables[table_name]
        clauses = [table.c.run_id == run_id] + [table.c[k] == v for k, v in equal.items()]
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(table).where(*clauses))]

    def results_run(self, run_id: str, stage: str) -> str:
        """The run whose result rows a run's stage points to (a rerun may reuse an earlier run's results)."""
        with self.engine.connect() as conn:
            outputs = conn.execute(sa.select(run_stages.c.outputs).where(
                run_stages.c.run_id == run_id, run_stages.c.stage == stage)).scalar()
        return (outputs or {}).get("table_run_id", run_id)


def _add_lookup_indexes(conn) -> None:
    """Version 2: indexes on image, run and model ids for catalogs created at version 1."""
    for table in (predictions, cluster_assignments, models, quarantine):
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _add_result_detail_columns(conn) -> None:
    """Version 3: top-k labels per prediction; top labels, exemplars and outliers per cluster."""
    for table, names in ((predictions, ("top_k",)), (cluster_summaries, ("top_labels", "exemplars", "outliers"))):
        present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for name in names:
            if name not in present:
                kind = table.c[name].type.compile(conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))


# schema version -> step that brings a catalog from the previous version to it
MIGRATIONS = {2: _add_lookup_indexes, 3: _add_result_detail_columns}


def migrate(engine: sa.Engine) -> int:
    """Create missing tables and apply pending migrations, recording the schema version.

    Returns:
        The schema version the catalog had before (0 for a new catalog).
    """
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7406)"))  # one migrator at a time
        existed = sa.inspect(conn).has_table(meta.name)
        metadata.create_all(conn)
        row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).first()
        if row is None:
            conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            return 1 if existed else 0
        before = int(row.value)
        for version in range(before + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
        if before < SCHEMA_VERSION:
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        return before


def _retrying(fn, attempts: int = 6):
    """Run a transaction, retrying when a concurrent writer won a race or held a lock."""
    for attempt in range(attempts):
        try:
            return fn()
        except (sa.exc.IntegrityError, sa.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def redact(value: Any) -> Any:
    """Mask the password of any database URL inside a (nested) value."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        try:
            return sa.engine.make_url(value).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return value
    return value


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def to_json(value: Any) -> Any:
    """Round-trip a value through JSON so numpy scalars become plain numbers."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
