"""``Store``: the catalog and the result tables of one store, in SQL through SQLAlchemy.

The catalog records runs and their stages, dataset versions with their shard
manifests, image sources, models and quarantine. Result tables (predictions,
cluster assignments and summaries) are what people query. A dataset version
exists only once its manifest is committed here.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fusion_core import uri
from fusion_core.config import Settings
from fusion_core.datasets import shard_checksum
from fusion_core.errors import one_line
from fusion_core.store.migrations import migrate
from fusion_core.store.results import CHUNK_ROWS, RESULT_TABLES, ResultTables, batched
from fusion_core.store.tables import (PATH_OUTPUTS, dataset_shards, dataset_versions, image_sources, meta,
                                      metadata, models,
                                      promotions, quarantine, run_stages, runs, writer_lease)

log = logging.getLogger(__name__)

LOOKUP_CHUNK = 500  # ids per IN (...) lookup
HEARTBEAT_S = 20  # how often a live run renews its heartbeat
DETAILS_S = 2  # how often a live run looks for new details to record (the Ray dashboard's address)
LEASE_S = 120  # a running run whose heartbeat is older than this has lost its process
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")  # run ids name folders: nothing that leaves one
_migrated: set[str] = set()  # catalogs this process has brought to the current schema


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261126-201300-1a2b3c``."""
    return f"{_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class Store(ResultTables):
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
        self._migrate_once(db_url)

    def _migrate_once(self, db_url: str) -> None:
        """Create or migrate the catalog the first time this process opens it (a new SQLite file: again)."""
        url = sa.engine.make_url(db_url)
        fresh_file = url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).exists())
        if db_url in _migrated and not fresh_file:
            return
        _retrying(lambda: migrate(self.engine))
        _migrated.add(db_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(settings.store.root, settings.store.db)

    @classmethod
    def open_existing(cls, settings: Settings) -> "Store":
        """The store that ``settings`` name, if one exists there; unlike ``Store(...)`` it never creates one.

        Raises:
            StoreNotFoundError: no catalog at the store root, or a catalog database without Fusion's tables.
        """
        root, db_url = settings.store.root, settings.store.db
        if db_url is None and "://" not in root:
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

    def _outputs(self, outputs: dict | None, convert: Callable[[str], str]) -> dict | None:
        """A stage's outputs with its store paths (``PATH_OUTPUTS``) passed through ``convert``."""
        if not outputs:
            return outputs
        return {k: convert(v) if k in PATH_OUTPUTS and isinstance(v, str) else v for k, v in outputs.items()}

    def _summary(self, summary: dict | None) -> dict | None:
        """A run's summary (stage name -> the stage's result) with its stages' store paths made relative."""
        return summary and {k: {**v, "outputs": self._outputs(v["outputs"], self.relative)}
                            if isinstance(v, dict) and isinstance(v.get("outputs"), dict) else v
                            for k, v in summary.items()}

    def _model(self, row) -> dict | None:
        return {**row._mapping, "path": self.located(row.path)} if row else None

    # runs -----------------------------------------------------------------
    def start_run(self, flow: str, params: dict[str, Any], run_id: str | None = None,
                  exclusive: bool = False) -> str:
        """Open a run; database passwords in ``params`` are masked before they are stored.

        Runs whose process has died are recorded as ``abandoned`` first. An ``exclusive`` run checks that the
        store takes writes and takes the store's writer lease, released by ``finish_run``.

        Raises:
            StoreReadOnlyError: ``exclusive`` and the store root or catalog takes no writes.
            StoreBusyError: ``exclusive`` and another live run holds the lease.
        """
        if run_id is not None and not RUN_ID.fullmatch(run_id):
            raise ValueError(f"run id {run_id!r}: use 1-40 letters, digits, '.', '_' or '-', starting with a letter "
                             f"or digit")
        if exclusive:
            self.check_writable()
        self.close_abandoned()
        run_id = run_id or new_run_id()
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(run_id=run_id, flow=flow, status="running", started_at=_now(),
                                              params=redact(params), host=socket.gethostname(), pid=os.getpid(),
                                              heartbeat_at=_now()))
        if exclusive:
            try:
                self._take_lease(run_id)
            except StoreBusyError as err:
                self.finish_run(run_id, "refused", {"error": str(err)})
                raise
        return run_id

    def check_writable(self) -> None:
        """Raise ``StoreReadOnlyError`` unless the store root and the catalog both take writes."""
        probe = self.path(f".write-probe-{uuid.uuid4().hex[:8]}")
        try:
            uri.write_bytes(probe, b"")
            uri.delete_file(probe)
        except OSError as err:
            why = os.strerror(err.errno) if err.errno else str(err).rsplit("] ", 1)[-1]
            raise StoreReadOnlyError(f"the store root {self.root} is read-only ({why}): Fusion writes its shards, "
                                     f"models and reports there") from None
        try:
            with self.engine.begin() as conn:  # rewrite a value with itself: a write that changes nothing
                conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=meta.c.value))
        except sa.exc.OperationalError as err:
            raise StoreReadOnlyError(f"the catalog {self.engine.url.render_as_string(hide_password=True)} takes no "
                                     f"writes: {one_line(err)}") from None

    def check_not_busy(self) -> None:
        """Raise ``StoreBusyError`` when a live run holds the writer lease (a check; ``start_run`` decides)."""
        _, run = self._lease_holder()
        if run is not None and run["status"] == "running":
            raise StoreBusyError.about(run, self.root)

    def _lease_holder(self) -> tuple[str | None, dict | None]:
        """The run id holding the writer lease and that run (None, None when free)."""
        with self.engine.connect() as conn:
            holder = conn.execute(sa.select(writer_lease.c.run_id)).scalar()
        return holder, self.get_run(holder) if holder else None

    def _take_lease(self, run_id: str) -> None:
        """Become the store's only writer, taking the lease over from a run that is no longer live."""
        for _ in range(3):
            holder, run = self._lease_holder()
            if run is not None and run["status"] == "running":
                raise StoreBusyError.about(run, self.root)
            if holder is not None:
                with self.engine.begin() as conn:  # only the run that saw this holder may remove it
                    conn.execute(writer_lease.delete().where(writer_lease.c.run_id == holder))
            try:
                with self.engine.begin() as conn:
                    conn.execute(writer_lease.insert().values(name="writer", run_id=run_id, since=_now()))
                return
            except sa.exc.IntegrityError:
                continue  # another run took it first: look again
        raise StoreBusyError(f"the store at {self.root} is busy: other runs keep taking its writer lease")

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id)
                         .values(status=status, finished_at=_now(), summary=self._summary(summary)))
            conn.execute(writer_lease.delete().where(writer_lease.c.run_id == run_id))

    @contextmanager
    def heartbeat(self, run_id: str, every: float = HEARTBEAT_S, details: Callable[[], dict] | None = None):
        """Renew the run's heartbeat from a background thread while the block runs.

        ``details()``, polled every ``DETAILS_S``, returns facts about the live run (such as the Ray
        dashboard's address) to record in its params whenever they change.
        """
        stop = threading.Event()

        def beat() -> None:
            last_beat, recorded = time.monotonic(), {}
            while not stop.wait(min(every, DETAILS_S)):
                values = {}
                if time.monotonic() - last_beat >= every:
                    values["heartbeat_at"], last_beat = _now(), time.monotonic()
                noted = details() if details else {}
                if noted != recorded:
                    values["params"] = {**(self.get_run(run_id)["params"] or {}), **noted}
                if not values:
                    continue
                try:
                    with self.engine.begin() as conn:
                        conn.execute(runs.update().where(runs.c.run_id == run_id).values(**values))
                    recorded = noted
                except sa.exc.SQLAlchemyError as err:  # the next beat may get through; the lease is generous
                    log.warning("heartbeat of run %s not recorded: %s", run_id, err)

        thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def close_abandoned(self) -> list[str]:
        """Record as ``abandoned`` each running run whose process is gone, and the stage it was in; returns
        their ids. Their resumable work (shards, checkpoints) is left for the next run to take over."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.status == "running")).all()
        dead = [r for r in rows if not _is_live(r._mapping)]
        for row in dead:
            with self.engine.begin() as conn:
                stage = conn.execute(sa.select(run_stages.c.stage).where(
                    run_stages.c.run_id == row.run_id, run_stages.c.status == "running")).scalar()
                conn.execute(run_stages.update().where(run_stages.c.run_id == row.run_id,
                                                       run_stages.c.status == "running")
                             .values(status="abandoned", error="the run's process died"))
                conn.execute(runs.update().where(runs.c.run_id == row.run_id, runs.c.status == "running").values(
                    status="abandoned", finished_at=row.heartbeat_at or row.started_at,
                    summary={"error": f"the run's process died{f' in {stage}' if stage else ''}",
                             "abandoned_in": stage}))
                conn.execute(writer_lease.delete().where(writer_lease.c.run_id == row.run_id))
            log.warning("run %s was abandoned (its process died%s)", row.run_id, f" in {stage}" if stage else "")
        return [r.run_id for r in dead]

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
                                 metrics=metrics, outputs=self._outputs(outputs, self.relative), error=error))

    def list_runs(self, limit: int | None = 20) -> list[dict]:
        """Runs, newest first (all of them when ``limit`` is None); a run whose process is gone shows as
        ``abandoned``."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit))
            return [_with_liveness(dict(r._mapping)) for r in rows]

    def get_run(self, run_id: str) -> dict | None:
        """The run and its stages, or None; a run whose process is gone shows as ``abandoned``, and so does
        the stage it was in."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
            if row is None:
                return None
            stages = [{**s._mapping, "outputs": self._outputs(s.outputs, self.located)}
                      for s in conn.execute(sa.select(run_stages).where(
                          run_stages.c.run_id == run_id).order_by(run_stages.c.started_at))]
        run = _with_liveness(dict(row._mapping))
        if run["status"] == "abandoned":
            stages = [{**s, "status": "abandoned"} if s["status"] == "running" else s for s in stages]
        return {**run, "stages": stages}

    def find_run(self, ref: str, stage: str | None = None) -> dict:
        """The run ``ref`` names, with its stages: a run id or ``latest`` (the newest run; with ``stage``, the
        newest whose ``stage`` completed).

        Raises:
            LookupError: no such run (naming the closest run id), or the run has no completed ``stage``.
        """
        if ref == "latest":
            query = sa.select(runs.c.run_id).order_by(runs.c.started_at.desc()).limit(1)
            if stage:
                query = query.join(run_stages, run_stages.c.run_id == runs.c.run_id).where(
                    run_stages.c.stage == stage, run_stages.c.status == "completed")
            with self.engine.connect() as conn:
                ref = conn.execute(query).scalar()
            if ref is None:
                raise LookupError(f"no run{f' with a completed {stage} stage' if stage else ''} in {self.root} yet")
        run = self.get_run(ref)
        if run is None:
            with self.engine.connect() as conn:
                ids = list(conn.execute(sa.select(runs.c.run_id)).scalars())
            near = [i for i in ids if i.startswith(ref)] or difflib.get_close_matches(ref, ids, n=1, cutoff=0.6)
            raise LookupError(f"no run {ref!r} in {self.root}" + (f"; did you mean {near[0]}?" if near else "")
                              + " (see `fusion runs`)")
        if stage and not any(s["stage"] == stage and s["status"] == "completed" for s in run["stages"]):
            ran = ", ".join(s["stage"] for s in run["stages"]) or "no stages"
            raise LookupError(f"run {ref} ({run['flow']}: {ran}) has no completed {stage} stage; "
                              f"`--run latest` takes the newest run that has one")
        return run

    def previous_run(self, run_id: str) -> dict | None:
        """The last completed run of the same flow that started before ``run_id``, with its stages, or None."""
        with self.engine.connect() as conn:
            this = conn.execute(sa.select(runs.c.flow, runs.c.started_at).where(runs.c.run_id == run_id)).first()
            if this is None:
                return None
            earlier = conn.execute(sa.select(runs.c.run_id).where(
                runs.c.flow == this.flow, runs.c.status == "completed", runs.c.started_at < this.started_at,
                runs.c.run_id != run_id).order_by(runs.c.started_at.desc()).limit(1)).scalar()
        return self.get_run(earlier) if earlier else None

    # datasets -------------------------------------------------------------
    def latest_version(self, dataset: str) -> dict | None:
        """The newest committed version of a dataset with its shard paths."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(dataset_versions).where(dataset_versions.c.dataset == dataset)
                               .order_by(dataset_versions.c.version.desc()).limit(1)).first()
            return self._with_shards(conn, row)

    def get_version(self, dataset: str, version: int | None) -> dict | None:
        """A committed version of a dataset with its shard paths (``info`` at least ``{}``), or None."""
        if version is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(dataset_versions).where(dataset_versions.c.dataset == dataset,
                                                                 dataset_versions.c.version == version)).first()
            return self._with_shards(conn, row)

    def require_version(self, dataset: str, version: int | None) -> dict:
        """``get_version``, raising ``LookupError`` with a clear message when the version does not exist."""
        found = self.get_version(dataset, version)
        if found is None:
            with self.engine.connect() as conn:
                known = sorted(conn.execute(sa.select(dataset_versions.c.version).where(
                    dataset_versions.c.dataset == dataset)).scalars())
            raise LookupError(f"no {dataset} dataset version {version} in the store at {self.root}; "
                              + (f"it has versions {known[0]}-{known[-1]}" if known else f"it has no {dataset} yet"))
        return found

    def list_versions(self, dataset: str) -> list[dict]:
        """Every committed version of a dataset with its shards, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(dataset_versions).where(dataset_versions.c.dataset == dataset)
                                .order_by(dataset_versions.c.version)).all()
            return [self._with_shards(conn, row) for row in rows]

    def delete_versions(self, dataset: str, versions: Iterable[int]) -> None:
        """Forget dataset versions (their manifests) in one transaction; their files are the caller's."""
        versions = list(versions)
        with self.engine.begin() as conn:
            for table in (dataset_shards, dataset_versions):
                conn.execute(table.delete().where(table.c.dataset == dataset, table.c.version.in_(versions)))

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
        shards = conn.execute(sa.select(dataset_shards.c.path, dataset_shards.c.num_rows, dataset_shards.c.checksum)
                              .where(dataset_shards.c.dataset == row.dataset,
                                     dataset_shards.c.version == row.version)
                              .order_by(dataset_shards.c.path))
        return {**row._mapping, "info": row._mapping["info"] or {}, "shards": [dict(s._mapping) for s in shards]}

    def commit_version(self, dataset: str, shards: Sequence[dict], run_id: str | None,
                       key: str | None = None, info: dict | None = None, sources: Iterable[dict] = ()) -> int:
        """Atomically commit a dataset version: its manifest and any image sources.

        Args:
            shards: ``[{"path": ..., "num_rows": ..., "checksum": ...}]`` relative to the store root, all written;
                a shard without a checksum gets one from its file.
            sources: ``{"image_id", "source"}`` rows to record with the version, streamed in chunks; iterated
                once per attempt (a concurrent commit may force another), so a re-iterable collection.
        Returns:
            The new version number.
        """
        shards = [s if s.get("checksum") else {**s, "checksum": shard_checksum(self.root, s["path"])} for s in shards]
        shards = [{k: s[k] for k in ("path", "num_rows", "checksum")} for s in shards]

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
                self._insert_new(conn, image_sources, ({**s, "run_id": run_id} for s in sources),
                                 ("image_id", "source"))
            return version

        return _retrying(commit)  # a concurrent commit may take the same number first

    def dataset_names(self) -> list[str]:
        """The datasets with at least one committed version."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(dataset_versions.c.dataset).distinct()
                                     .order_by(dataset_versions.c.dataset)).scalars())

    def record_checksums(self, checksums: dict[str, str]) -> int:
        """Record the checksum of shards committed without one; returns how many shard rows got one."""
        with self.engine.begin() as conn:
            return sum(conn.execute(dataset_shards.update().where(dataset_shards.c.path == path,
                                                                  dataset_shards.c.checksum.is_(None))
                                    .values(checksum=checksum)).rowcount for path, checksum in checksums.items())

    def result_references(self) -> Iterator[tuple[str, str, list]]:
        """``(table, column, distinct values)`` of each column that names a run or a model version."""
        columns = [(t, "run_id") for t in (dataset_versions, models, quarantine, *(metadata.tables[n] for n in
                                                                                   RESULT_TABLES))]
        with self.engine.connect() as conn:
            for table, column in columns + [(metadata.tables["predictions"], "model_version")]:
                yield table.name, column, list(conn.execute(sa.select(table.c[column]).distinct()).scalars())

    def record_sources(self, sources: Iterable[dict], run_id: str | None) -> int:
        """Record more paths of already stored images."""
        with self.engine.begin() as conn:
            return self._insert_new(conn, image_sources, ({**s, "run_id": run_id} for s in sources),
                                    ("image_id", "source"))

    def known_sources(self) -> set[tuple[str, str]]:
        """Every recorded ``(image id, source)`` pair (for tests and small stores: it reads the whole table)."""
        with self.engine.connect() as conn:
            return {tuple(r) for r in conn.execute(sa.select(image_sources.c.image_id, image_sources.c.source))}

    def known_image_ids(self, image_ids: Iterable[str]) -> set[str]:
        """Those of ``image_ids`` that the catalog already holds, looked up in chunks."""
        ids, found = list(image_ids), set()
        with self.engine.connect() as conn:
            for start in range(0, len(ids), LOOKUP_CHUNK):
                chunk = ids[start:start + LOOKUP_CHUNK]
                found.update(conn.execute(sa.select(image_sources.c.image_id).distinct()
                                          .where(image_sources.c.image_id.in_(chunk))).scalars())
        return found

    def sources_of(self, image_ids: Iterable[str]) -> dict[str, list[str]]:
        """Each image's recorded source paths (sorted), looked up in chunks."""
        ids, found = list(image_ids), {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), LOOKUP_CHUNK):
                rows = conn.execute(sa.select(image_sources.c.image_id, image_sources.c.source).where(
                    image_sources.c.image_id.in_(ids[start:start + LOOKUP_CHUNK])))
                for image_id, source in rows:
                    found.setdefault(image_id, []).append(source)
        return {i: sorted(s) for i, s in found.items()}

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

    def count_quarantine(self, run_ids: Iterable[str]) -> int:
        """Files quarantined by the given runs."""
        ids = list(run_ids)
        with self.engine.connect() as conn:
            return sum(conn.execute(sa.select(sa.func.count()).select_from(quarantine)
                                    .where(quarantine.c.run_id.in_(chunk))).scalar()
                       for chunk in batched(ids, LOOKUP_CHUNK))

    @staticmethod
    def _insert_new(conn, table: sa.Table, rows: Iterable[dict], unique: tuple[str, ...]) -> int:
        """Insert the rows whose unique columns are not present yet (the database's ``ON CONFLICT DO
        NOTHING``), in chunks; returns how many were inserted."""
        insert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}[conn.dialect.name]
        stmt = insert(table).on_conflict_do_nothing(index_elements=list(unique)).returning(table.c[unique[0]])
        return sum(len(conn.execute(stmt, chunk).all()) for chunk in batched(rows, CHUNK_ROWS))

    # models ---------------------------------------------------------------
    def register_model(self, run_id: str, name: str, path: str, key: str, dataset_version: int,
                       metrics: dict, config: dict) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(models.insert().values(
                run_id=run_id, name=name, path=self.relative(path), stage="challenger", key=key,
                dataset_version=dataset_version, metrics=metrics, config=config, created_at=_now()))
            return result.inserted_primary_key[0]

    def champion(self) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.stage == "champion")
                               .order_by(models.c.version.desc()).limit(1)).first()
            return self._model(row)

    def get_model(self, version: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.version == version)).first()
            return self._model(row)

    def find_model(self, key: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.key == key)
                               .order_by(models.c.version.desc()).limit(1)).first()
            return self._model(row)

    def set_champion(self, version: int, reason: str, actor: str = "fusion", forced: bool = False) -> None:
        """Make ``version`` the champion (the current one is archived) and record who did it and why."""
        with self.engine.begin() as conn:
            previous = conn.execute(sa.select(models.c.version).where(models.c.stage == "champion")).scalar()
            conn.execute(models.update().where(models.c.stage == "champion").values(stage="archived"))
            conn.execute(models.update().where(models.c.version == version).values(stage="champion"))
            conn.execute(promotions.insert().values(version=version, previous=previous, at=_now(), actor=actor,
                                                    forced=forced, reason=reason))

    def promotion_history(self, version: int | None = None) -> list[dict]:
        """Champion changes, oldest first (of ``version`` only when given)."""
        query = sa.select(promotions).order_by(promotions.c.id)
        if version is not None:
            query = query.where(promotions.c.version == version)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def list_models(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [self._model(r) for r in conn.execute(sa.select(models).order_by(models.c.version))]


class StoreBusyError(RuntimeError):
    """Another live run holds the store's writer lease."""

    @classmethod
    def about(cls, run: dict, root: str) -> "StoreBusyError":
        return cls(f"run {run['run_id']} ({run['flow']}) is running on the store at {root} since "
                   f"{run['started_at']:%Y-%m-%d %H:%M:%S} UTC; one run writes to a store at a time: try again when "
                   f"it ends")


class StoreNotFoundError(LookupError):
    """No Fusion store where one was named."""


class StoreReadOnlyError(RuntimeError):
    """The store root or its catalog takes no writes."""


def _is_live(run: dict) -> bool:
    """Whether a running run's process still lives: its heartbeat is recent and, on this host, its process
    exists (a process id alone could be a later process's)."""
    beat = run.get("heartbeat_at") or run["started_at"]
    if (_now() - beat).total_seconds() > LEASE_S:
        return False
    if run.get("host") == socket.gethostname() and run.get("pid"):
        try:
            os.kill(run["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def _with_liveness(run: dict) -> dict:
    """The run, ``abandoned`` when it says ``running`` but its process is gone."""
    if run["status"] == "running" and not _is_live(run):
        return {**run, "status": "abandoned"}
    return run


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
    cursor.execute("PRAGMA case_sensitive_like=ON")  # as LIKE is on PostgreSQL (path globs)
    cursor.close()


def to_json(value: Any) -> Any:
    """Round-trip a value through JSON so numpy scalars become plain numbers."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
