"""What the catalog's parts share: the clock, retried transactions, inserts that skip existing rows, and
values made fit to store."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fusion_core import uri
from fusion_core.store.results import CHUNK_ROWS, batched



def now() -> dt.datetime:
    """The current UTC time, as the catalog keeps it (without a zone)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def retrying(fn, attempts: int = 6):
    """Run a transaction, retrying when a concurrent writer won a race or held a lock."""
    for attempt in range(attempts):
        try:
            return fn()
        except (sa.exc.IntegrityError, sa.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)



def insert_new(conn, table: sa.Table, rows: Iterable[dict], unique: tuple[str, ...]) -> int:
    """Insert the rows whose unique columns are not present yet (the database's ``ON CONFLICT DO NOTHING``),
    in chunks; returns how many were inserted."""
    insert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}[conn.dialect.name]
    stmt = insert(table).on_conflict_do_nothing(index_elements=list(unique)).returning(table.c[unique[0]])
    return sum(len(conn.execute(stmt, chunk).all()) for chunk in batched(rows, CHUNK_ROWS))


def redact(value: Any) -> Any:
    """Mask the password of any database URL inside a (nested) value."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and uri.is_uri(value) and "@" in value:
        try:
            return sa.engine.make_url(value).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return value
    return value



def to_json(value: Any) -> Any:
    """Round-trip a value through JSON so numpy scalars become plain numbers."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
