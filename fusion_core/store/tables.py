"""The catalog's SQL tables (SQLAlchemy Core) and their schema version."""

from __future__ import annotations

import sqlalchemy as sa

# Stage outputs that name a file in the store, and the top folder it lies in.
PATH_OUTPUTS = {"report": "reports", "gallery": "reports", "runs_index": "reports", "model_path": "models"}
SCHEMA_VERSION = 5  # see MIGRATIONS

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
    sa.Column("host", sa.String(255)),  # where the run's driver process lives
    sa.Column("pid", sa.Integer),
    sa.Column("heartbeat_at", sa.DateTime),  # renewed while the driver lives
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
    sa.Column("checksum", sa.String(64)),  # sha256 of the file, recorded at commit
)
image_sources = sa.Table(
    "image_sources", metadata,
    sa.Column("image_id", sa.String(64), primary_key=True),
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("run_id", sa.String(40)),
)
quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), index=True),
    sa.Column("source", sa.Text, nullable=False),
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
promotions = sa.Table(  # every change of champion, automatic or by hand
    "promotions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.Integer, nullable=False, index=True),
    sa.Column("previous", sa.Integer),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("image_id", sa.String(64), primary_key=True, index=True),
    sa.Column("model_version", sa.Integer, nullable=False, index=True),
    sa.Column("label", sa.Text),
    sa.Column("predicted", sa.Text, nullable=False),
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
    sa.Column("top_label", sa.Text),
    sa.Column("purity", sa.Float),
    sa.Column("top_labels", sa.JSON),
    sa.Column("exemplars", sa.JSON),
    sa.Column("outliers", sa.JSON),
)
findings = sa.Table(  # what the mine stage flagged: one row per image and kind of finding
    "findings", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(20), primary_key=True),
    sa.Column("image_id", sa.String(64), primary_key=True, index=True),
    sa.Column("score", sa.Float, nullable=False),  # higher: more of it (similarity, uniqueness, label doubt)
    sa.Column("duplicate_set", sa.Integer),
    sa.Column("label", sa.Text),
    sa.Column("suggested", sa.Text),
    sa.Column("split", sa.String(8)),
    sa.Column("flags", sa.Text),  # quality: the image's quality flags
)
decisions = sa.Table(  # people's standing decisions about images, applied by the next training run
    "decisions", metadata,
    sa.Column("image_id", sa.String(64), primary_key=True),
    sa.Column("action", sa.String(16), nullable=False),  # exclude or relabel
    sa.Column("label", sa.Text),  # relabel: the correct label
    sa.Column("reason", sa.Text),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("decided_at", sa.DateTime, nullable=False),
)
writer_lease = sa.Table(  # at most one row: the run that may write to the store now
    "writer_lease", metadata,
    sa.Column("name", sa.String(20), primary_key=True),
    sa.Column("run_id", sa.String(40), nullable=False),
    sa.Column("since", sa.DateTime, nullable=False),
)
meta = sa.Table(
    "fusion_meta", metadata,
    sa.Column("key", sa.String(40), primary_key=True),
    sa.Column("value", sa.String(200)),
)
