"""The store: Parquet artifacts under one root, and a SQL catalog of what is committed there.

``Store`` (``catalog``) is the catalog's API; ``tables`` holds the schema and ``migrations`` its upgrades.
"""

from fusion_core.store.catalog import (Store, StoreBusyError, StoreNotFoundError, StoreReadOnlyError, new_run_id,
                                       redact, to_json)

__all__ = ["Store", "StoreBusyError", "StoreNotFoundError", "StoreReadOnlyError", "new_run_id", "redact", "to_json"]
