"""Image sources and quarantine in the catalog: where each stored image was found, and the inputs that were
refused with their reasons."""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from fusion_core.store.common import insert_new, now
from fusion_core.store.results import LOOKUP_CHUNK, batched
from fusion_core.store.tables import image_sources, quarantine


class SourceCatalog:
    """The sources and quarantine part of ``Store`` (which provides ``engine``)."""

    def record_sources(self, sources: Iterable[dict], run_id: str | None) -> int:
        """Record more paths of already stored images."""
        with self.engine.begin() as conn:
            return insert_new(conn, image_sources, ({**s, "run_id": run_id} for s in sources),
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

    def resolve_images(self, refs: Iterable[str]) -> dict[str, list[str]]:
        """The image ids each reference names: a whole image id, a prefix of one (at least 6 hex digits), or a
        recorded source path; several ids for a prefix they share, none for an unknown reference."""
        found = {}
        query = sa.select(image_sources.c.image_id).distinct()
        with self.engine.connect() as conn:
            for ref in refs:
                ids = conn.execute(query.where(image_sources.c.source == ref)).scalars().all()
                if not ids and len(ref) >= 6 and all(c in string.hexdigits for c in ref):
                    ids = conn.execute(query.where(image_sources.c.image_id.like(f"{ref.lower()}%"))).scalars().all()
                found[ref] = sorted(ids)
        return found

    # quarantine -----------------------------------------------------------
    def add_quarantine(self, run_id: str, rows: Sequence[dict]) -> int:
        """Record bad inputs once each; returns how many were new."""
        stamped = [{**r, "run_id": run_id, "created_at": now()} for r in rows]
        with self.engine.begin() as conn:
            return insert_new(conn, quarantine, stamped, ("source", "content_hash", "stage"))

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
