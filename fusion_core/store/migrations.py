"""Schema migrations of the catalog: each step brings a catalog from the version before to its own."""

from __future__ import annotations

import sqlalchemy as sa

from fusion_core import uri
from fusion_core.store.tables import (PATH_OUTPUTS, SCHEMA_VERSION, cluster_assignments, cluster_summaries,
                                      dataset_shards, meta, metadata, models, predictions, quarantine, run_stages, runs)


def _add_lookup_indexes(conn) -> None:
    """Version 2: indexes on image, run and model ids for catalogs created at version 1."""
    for table in (predictions, cluster_assignments, models, quarantine):
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _add_columns(conn, changes) -> None:
    """Add the named columns of each table that a catalog lacks."""
    for table, names in changes:
        present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for name in names:
            if name not in present:
                kind = table.c[name].type.compile(conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))


def _add_result_detail_columns(conn) -> None:
    """Version 3: top-k labels per prediction; top labels, exemplars and outliers per cluster."""
    _add_columns(conn, ((predictions, ("top_k",)), (cluster_summaries, ("top_labels", "exemplars", "outliers"))))


def _add_checksums_and_heartbeats(conn) -> None:
    """Version 4: a checksum per shard (recorded at the next commit or by ``fusion fsck --repair``); the host,
    process and heartbeat of each run; labels and source paths of any length (SQLite never limited them)."""
    _add_columns(conn, ((dataset_shards, ("checksum",)), (runs, ("host", "pid", "heartbeat_at"))))
    if conn.dialect.name == "postgresql":
        for table, name in (("image_sources", "source"), ("quarantine", "source"), ("predictions", "label"),
                            ("predictions", "predicted"), ("cluster_summaries", "top_label")):
            conn.execute(sa.text(f"ALTER TABLE {table} ALTER COLUMN {name} TYPE TEXT"))


def store_relative(path, folder: str):
    """A store path recorded absolute (before version 5) as the catalog keeps it now: from its last
    ``/<folder>/`` on. The old root need not be known, so a store already moved migrates too."""
    if not isinstance(path, str) or not (path.startswith("/") or uri.is_uri(path)) or f"/{folder}/" not in path:
        return path
    return f"{folder}/" + path.rsplit(f"/{folder}/", 1)[1]


def _relative_outputs(outputs):
    if not isinstance(outputs, dict):
        return outputs
    return {k: store_relative(v, PATH_OUTPUTS[k]) if k in PATH_OUTPUTS else v for k, v in outputs.items()}


def _relative_paths(conn) -> None:
    """Version 5: model files and reports recorded relative to the store root, so that a copied, moved or
    restored store is the same store (shards always were)."""
    for row in conn.execute(sa.select(models.c.version, models.c.path)).all():
        if store_relative(row.path, "models") != row.path:
            conn.execute(models.update().where(models.c.version == row.version)
                         .values(path=store_relative(row.path, "models")))
    for row in conn.execute(sa.select(run_stages.c.run_id, run_stages.c.stage, run_stages.c.outputs)).all():
        if _relative_outputs(row.outputs) != row.outputs:
            conn.execute(run_stages.update().where(run_stages.c.run_id == row.run_id, run_stages.c.stage == row.stage)
                         .values(outputs=_relative_outputs(row.outputs)))
    for row in conn.execute(sa.select(runs.c.run_id, runs.c.summary)).all():
        if isinstance(row.summary, dict):
            summary = {k: {**v, "outputs": _relative_outputs(v["outputs"])} if isinstance(v, dict) and "outputs" in v
                       else v for k, v in row.summary.items()}
            if summary != row.summary:
                conn.execute(runs.update().where(runs.c.run_id == row.run_id).values(summary=summary))


# schema version -> step that brings a catalog from the previous version to it
MIGRATIONS = {2: _add_lookup_indexes, 3: _add_result_detail_columns, 4: _add_checksums_and_heartbeats,
              5: _relative_paths}


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
