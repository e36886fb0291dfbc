"""Dataset versions in the catalog: each a manifest of shards (with their checksums) committed at once, found
by number, by derivation key or as the newest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import sqlalchemy as sa

from fusion_core.store.common import insert_new, now, retrying
from fusion_core.store.datasets import shard_checksum
from fusion_core.store.results import RESULT_TABLES
from fusion_core.store.tables import dataset_shards, dataset_versions, image_sources, metadata, models, quarantine


class VersionCatalog:
    """The dataset-versions part of ``Store`` (which provides ``engine`` and ``root``)."""

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
                    dataset=dataset, version=version, run_id=run_id, created_at=now(),
                    num_rows=sum(s["num_rows"] for s in shards), key=key, info=info))
                if shards:
                    conn.execute(dataset_shards.insert(), [{"dataset": dataset, "version": version, **s}
                                                           for s in shards])
                insert_new(conn, image_sources, ({**s, "run_id": run_id} for s in sources),
                                 ("image_id", "source"))
            return version

        return retrying(commit)  # a concurrent commit may take the same number first

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
