"""The result tables people query (predictions, cluster assignments and summaries): ``Store``'s part."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from fusion_core.store.tables import image_sources, metadata, run_stages

RESULT_TABLES = ("predictions", "cluster_assignments", "cluster_summaries", "findings")
CHUNK_ROWS = 5000  # rows per INSERT statement
LOOKUP_CHUNK = 500  # ids per IN (...) lookup


class ResultTables:
    """Writes and reads a run's rows of the result tables (mixed into ``Store``, which has the engine)."""

    engine: sa.Engine

    def replace_results(self, table_name: str, run_id: str, rows: Iterable[dict]) -> int:
        """Write a run's result rows, replacing any earlier rows of that run, in one transaction.

        Rows are streamed in chunks (``COPY`` on PostgreSQL, batched inserts elsewhere), so they need not
        fit in memory together. Returns how many were written.
        """
        table = metadata.tables[table_name]
        stamped = ({**r, "run_id": run_id} for r in rows)
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.run_id == run_id))
            if conn.dialect.name == "postgresql":
                return _copy_rows(conn, table, stamped)
            written = 0
            for chunk in batched(stamped, CHUNK_ROWS):
                conn.execute(table.insert(), chunk)
                written += len(chunk)
            return written

    def delete_results_except(self, keep_run_ids: Iterable[str]) -> dict[str, int]:
        """Delete the result rows of every run but ``keep_run_ids``; returns rows deleted per table."""
        keep = list(keep_run_ids)
        deleted = {}
        with self.engine.begin() as conn:
            for name in RESULT_TABLES:
                table = metadata.tables[name]
                deleted[name] = conn.execute(table.delete().where(table.c.run_id.not_in(keep))).rowcount
        return deleted

    def query(self, table_name: str, run_id: str, **equal: Any) -> list[dict]:
        """A run's rows of a result table, optionally filtered on column equality (``select_results`` does more)."""
        return self.select_results(table_name, run_id, equal=equal)

    def select_results(self, table_name: str, run_id: str, equal: dict[str, Any] | None = None,
                       at_least: dict[str, float] | None = None, path_glob: str | None = None,
                       image_ids: Sequence[str] | None = None, order_by: Sequence[str] = (),
                       limit: int | None = None, differ: tuple[str, str] | None = None) -> list[dict]:
        """A run's rows of a result table, filtered, ordered and limited in SQL.

        Args:
            equal / at_least: column values to match / minimums.
            differ: two columns that must both be set and differ (e.g. ``("label", "predicted")``).
            path_glob: keep images with a source path matching it (``*`` any text, ``?`` one character).
            image_ids: only these images (a few hundred at a time).
            order_by: column names, ``-name`` for descending.
        """
        table = metadata.tables[table_name]
        clauses = [table.c.run_id == run_id] + [table.c[k] == v for k, v in (equal or {}).items()]
        clauses += [table.c[k] >= v for k, v in (at_least or {}).items()]
        if differ:
            clauses += [table.c[differ[0]].is_not(None), table.c[differ[1]].is_not(None),
                        table.c[differ[0]] != table.c[differ[1]]]
        if image_ids is not None:
            clauses.append(table.c.image_id.in_(image_ids))
        if path_glob:
            clauses.append(table.c.image_id.in_(sa.select(image_sources.c.image_id).where(
                image_sources.c.source.like(like_pattern(path_glob), escape="\\"))))
        query = sa.select(table).where(*clauses).order_by(
            *(table.c[c[1:]].desc() if c.startswith("-") else table.c[c] for c in order_by)).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def results_by_image(self, table_name: str, run_id: str, image_ids: Iterable[str]) -> dict[str, dict]:
        """A run's rows of a result table for these images, by image id (looked up ``LOOKUP_CHUNK`` at a time)."""
        return {row["image_id"]: row for chunk in batched(image_ids, LOOKUP_CHUNK)
                for row in self.select_results(table_name, run_id, image_ids=chunk)}

    def image_results(self, table_name: str, image_id: str) -> list[dict]:
        """One image's rows of a result table in every run that has one, newest run first."""
        table = metadata.tables[table_name]
        query = sa.select(table).where(table.c.image_id == image_id).order_by(table.c.run_id.desc())
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def distinct_results(self, table_name: str, run_id: str, column: str) -> list:
        """The distinct non-null values of one column of a run's rows of a result table, sorted."""
        table = metadata.tables[table_name]
        query = sa.select(table.c[column]).where(table.c.run_id == run_id, table.c[column].is_not(None)).distinct()
        with self.engine.connect() as conn:
            return sorted(conn.execute(query).scalars())

    def results_run(self, run_id: str, stage: str) -> str:
        """The run whose result rows a run's stage points to (a rerun may reuse an earlier run's results)."""
        with self.engine.connect() as conn:
            outputs = conn.execute(sa.select(run_stages.c.outputs).where(
                run_stages.c.run_id == run_id, run_stages.c.stage == stage)).scalar()
        return (outputs or {}).get("table_run_id", run_id)


def like_pattern(glob: str) -> str:
    """A SQL ``LIKE`` pattern (escape character ``\\``) matching what the glob matches."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def path_matches(glob: str, path: str) -> bool:
    """Whether ``path`` matches the glob as ``like_pattern`` does (``*`` any text, ``?`` one character)."""
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.fullmatch(pattern, path, flags=re.DOTALL) is not None


def batched(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Lists of at most ``size`` rows."""
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _copy_rows(conn, table: sa.Table, rows: Iterable[dict]) -> int:
    """Stream rows into a PostgreSQL table with ``COPY`` on the transaction's own connection."""
    names = [c.name for c in table.columns]
    as_json = {c.name for c in table.columns if isinstance(c.type, sa.JSON)}
    written = 0
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([json.dumps(row.get(n)) if n in as_json and row.get(n) is not None else row.get(n)
                                for n in names])
                written += 1
    return written
