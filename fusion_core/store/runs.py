"""Runs and their stages in the catalog: opening and closing them, the heartbeat that shows a run lives, the
writer lease that lets one run write at a time, and finding runs again."""

from __future__ import annotations

import difflib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from fusion_core import uri
from fusion_core.errors import one_line
from fusion_core.store.common import now, redact
from fusion_core.store.results import LOOKUP_CHUNK, batched
from fusion_core.store.tables import PATH_OUTPUTS, meta, run_stages, runs, writer_lease

log = logging.getLogger(__name__)

HEARTBEAT_S = 20  # how often a live run renews its heartbeat
DETAILS_S = 2  # how often a live run looks for new details to record (the Ray dashboard's address)
LEASE_S = 120  # a running run whose heartbeat is older than this has lost its process
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")  # run ids name folders: nothing that leaves one


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261126-201300-1a2b3c``."""
    return f"{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class RunCatalog:
    """The runs part of ``Store`` (which provides ``engine``, ``root``, ``path``, ``relative`` and ``located``)."""

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
            conn.execute(runs.insert().values(run_id=run_id, flow=flow, status="running", started_at=now(),
                                              params=redact(params), host=socket.gethostname(), pid=os.getpid(),
                                              heartbeat_at=now()))
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
                    conn.execute(writer_lease.insert().values(name="writer", run_id=run_id, since=now()))
                return
            except sa.exc.IntegrityError:
                continue  # another run took it first: look again
        raise StoreBusyError(f"the store at {self.root} is busy: other runs keep taking its writer lease")

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id)
                         .values(status=status, finished_at=now(), summary=self._summary(summary)))
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
                    values["heartbeat_at"], last_beat = now(), time.monotonic()
                noted = details() if details else {}
                if not values and noted == recorded:
                    continue
                try:
                    if noted != recorded:
                        values["params"] = {**(self.get_run(run_id)["params"] or {}), **noted}
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
                                                    started_at=now()))

    def finish_stage(self, run_id: str, stage: str, status: str, counts=None, metrics=None,
                     outputs=None, error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(run_stages.update()
                         .where(run_stages.c.run_id == run_id, run_stages.c.stage == stage)
                         .values(status=status, finished_at=now(), counts=counts,
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
        found = self._with_stages(sa.select(runs).where(runs.c.run_id == run_id))
        return found[0] if found else None

    def list_runs_with_stages(self, limit: int) -> list[dict]:
        """The newest ``limit`` runs with their stages, as ``get_run`` gives each, in two queries."""
        return self._with_stages(sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit))

    def _with_stages(self, query) -> list[dict]:
        with self.engine.connect() as conn:
            rows = [_with_liveness(dict(r._mapping)) for r in conn.execute(query)]
            stages: dict[str, list[dict]] = {r["run_id"]: [] for r in rows}
            for chunk in batched(list(stages), LOOKUP_CHUNK):
                for s in conn.execute(sa.select(run_stages).where(run_stages.c.run_id.in_(chunk))
                                      .order_by(run_stages.c.started_at)):
                    stages[s.run_id].append({**s._mapping, "outputs": self._outputs(s.outputs, self.located)})
        for run in rows:
            if run["status"] == "abandoned":
                stages[run["run_id"]] = [{**s, "status": "abandoned"} if s["status"] == "running" else s
                                         for s in stages[run["run_id"]]]
        return [{**run, "stages": stages[run["run_id"]]} for run in rows]

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


class StoreBusyError(RuntimeError):
    """Another live run holds the store's writer lease."""

    @classmethod
    def about(cls, run: dict, root: str) -> "StoreBusyError":
        return cls(f"run {run['run_id']} ({run['flow']}) is running on the store at {root} since "
                   f"{run['started_at']:%Y-%m-%d %H:%M:%S} UTC; one run writes to a store at a time: try again when "
                   f"it ends")



class StoreReadOnlyError(RuntimeError):
    """The store root or its catalog takes no writes."""



def _is_live(run: dict) -> bool:
    """Whether a running run's process still lives: its heartbeat is recent and, on this host, its process
    exists (a process id alone could be a later process's)."""
    beat = run.get("heartbeat_at") or run["started_at"]
    if (now() - beat).total_seconds() > LEASE_S:
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
