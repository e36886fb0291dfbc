"""People's decisions about images in the catalog: exclude an image, or correct its label.

One standing decision per image, with who made it and when; the next training run applies those in force
(``Decisions.apply``) to its training data and holdout, and the mine stage to what it mines. Training also
moves into its training data the holdout images that have a near-duplicate there (``to_train``), so that the
holdout it is judged on holds no leaks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from fusion_core.store.common import now
from fusion_core.store.results import LOOKUP_CHUNK, batched
from fusion_core.store.tables import decisions

ACTIONS = ("exclude", "relabel")


@dataclass(frozen=True)
class Decisions:
    """The decisions in force: images excluded, corrected labels by image id, and images moved to the
    training split."""

    excluded: frozenset[str] = frozenset()
    relabelled: dict[str, str] = field(default_factory=dict)
    to_train: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.excluded or self.relabelled or self.to_train)

    def digest(self) -> str:
        """A short hash of the decisions, for the idempotency key of what they change."""
        parts = [sorted(self.excluded), sorted(self.relabelled.items())] + ([sorted(self.to_train)]
                                                                            if self.to_train else [])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]

    def counts(self) -> dict[str, int]:
        return {"excluded": len(self.excluded), "relabelled": len(self.relabelled),
                "leaks_moved": len(self.to_train)}

    def apply(self, table: pa.Table) -> pa.Table:
        """``table`` (with ``image_id`` and ``label`` columns) without the excluded images and with the
        corrected labels (and, where it has a ``split`` column, the ``to_train`` images in the train split)."""
        if self.excluded:
            table = table.filter(pc.invert(pc.is_in(table.column("image_id"), pa.array(sorted(self.excluded)))))
        if self.relabelled:
            position = pc.index_in(table.column("image_id"), pa.array(list(self.relabelled)))
            corrected = pc.take(pa.array(list(self.relabelled.values())), position)
            label = pc.if_else(pc.is_valid(position), corrected, table.column("label").cast(pa.string()))
            where = table.schema.get_field_index("label")
            table = table.set_column(where, table.schema.field(where), label.cast(table.schema.field(where).type))
        if self.to_train and "split" in table.schema.names:
            where = table.schema.get_field_index("split")
            moved = pc.is_in(table.column("image_id"), pa.array(sorted(self.to_train)))
            split = pc.if_else(moved, pa.scalar("train", table.schema.field(where).type), table.column(where))
            table = table.set_column(where, table.schema.field(where), split)
        return table


class DecisionCatalog:
    """The decisions part of ``Store`` (which provides ``engine``)."""

    def decide(self, rows: Iterable[dict], actor: str) -> int:
        """Record decisions (``image_id``, ``action``, ``label`` for relabel, ``reason``), each replacing the
        image's earlier one; returns how many were recorded."""
        stamped = [{"image_id": r["image_id"], "action": r["action"], "label": r.get("label"),
                    "reason": r.get("reason"), "actor": actor, "decided_at": now()} for r in rows]
        with self.engine.begin() as conn:
            for chunk in batched(stamped, LOOKUP_CHUNK):
                conn.execute(decisions.delete().where(decisions.c.image_id.in_([r["image_id"] for r in chunk])))
                conn.execute(decisions.insert(), chunk)
        return len(stamped)

    def undecide(self, image_ids: Iterable[str]) -> int:
        """Withdraw the decisions about these images; returns how many there were."""
        with self.engine.begin() as conn:
            return sum(conn.execute(decisions.delete().where(decisions.c.image_id.in_(chunk))).rowcount
                       for chunk in batched(list(image_ids), LOOKUP_CHUNK))

    def decision_rows(self, image_id: str | None = None) -> list[dict]:
        """Every decision in force (or the one about ``image_id``), newest first."""
        query = sa.select(decisions).order_by(decisions.c.decided_at.desc(), decisions.c.image_id)
        if image_id is not None:
            query = query.where(decisions.c.image_id == image_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def decisions(self) -> Decisions:
        """The decisions in force, as training and mining apply them."""
        rows = self.decision_rows()
        return Decisions(frozenset(r["image_id"] for r in rows if r["action"] == "exclude"),
                         {r["image_id"]: r["label"] for r in rows if r["action"] == "relabel"})
