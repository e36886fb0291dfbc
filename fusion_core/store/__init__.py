"""The store: Parquet artifacts under one root, and a SQL catalog of what is committed there.

``Store`` (``catalog``) is the catalog's API, joined from its parts: ``runs`` (runs, stages, heartbeat, writer
lease), ``versions`` (dataset versions and their shards), ``sources`` (image sources, quarantine), ``models``
(models, promotions), ``decisions`` (exclusions and corrected labels) and ``results`` (the result tables);
``tables`` holds the schema, ``migrations`` its upgrades and ``common`` what the parts share.
"""

from fusion_core.store.catalog import Store, StoreNotFoundError
from fusion_core.store.common import redact, to_json
from fusion_core.store.runs import StoreBusyError, StoreReadOnlyError, new_run_id

__all__ = ["Store", "StoreBusyError", "StoreNotFoundError", "StoreReadOnlyError", "new_run_id", "redact", "to_json"]
