"""Models and promotions in the catalog: registered models (their files kept relative to the store root), the
champion, and who changed it when and why."""

from __future__ import annotations

import sqlalchemy as sa

from fusion_core.store.common import now
from fusion_core.store.tables import models, promotions


class ModelCatalog:
    """The models part of ``Store`` (which provides ``engine``, ``relative`` and ``located``)."""

    def _model(self, row) -> dict | None:
        return {**row._mapping, "path": self.located(row.path)} if row else None

    def register_model(self, run_id: str, name: str, path: str, key: str, dataset_version: int,
                       metrics: dict, config: dict) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(models.insert().values(
                run_id=run_id, name=name, path=self.relative(path), stage="challenger", key=key,
                dataset_version=dataset_version, metrics=metrics, config=config, created_at=now()))
            return result.inserted_primary_key[0]

    def champion(self) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.stage == "champion")
                               .order_by(models.c.version.desc()).limit(1)).first()
            return self._model(row)

    def champion_version(self) -> int | None:
        champion = self.champion()
        return champion["version"] if champion else None

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
            conn.execute(promotions.insert().values(version=version, previous=previous, at=now(), actor=actor,
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
