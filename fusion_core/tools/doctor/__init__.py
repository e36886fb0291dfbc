"""``fusion doctor``: check what a run needs, each check a ``Check`` with a hint for what to do about it.

Light on import: Ray starts only in ``ray_checks``; TensorFlow is imported only by the Ray workers.
"""

from __future__ import annotations

from collections.abc import Iterator

from fusion_core.config import Settings
from fusion_core.tools.doctor.check import FAIL, PASS, WARN, Check
from fusion_core.ray_runtime import ray_address
from fusion_core.tools.doctor.cluster import ray_checks, start_local_probe, worker_checks
from fusion_core.tools.doctor.local import catalog, prefect_server, schema_check, store_root, versions

__all__ = ["FAIL", "PASS", "WARN", "Check", "catalog", "prefect_server", "ray_checks", "run_checks", "schema_check",
           "store_root", "summary", "versions", "worker_checks"]


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL)}
    return f"{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed"


def run_checks(settings: Settings, prefect_url: str | None, prefect_key: str | None = None) -> Iterator[Check]:
    """Every check, quick ones first, as each finishes; without a Ray cluster named, what this machine's Python
    imports is asked at once, beside the other checks."""
    local_probe = None if ray_address(settings) else start_local_probe()
    try:
        yield from versions()
        yield prefect_server(prefect_url, prefect_key)
        yield store_root(settings.store.root)
        yield catalog(settings.store.root, settings.store.db)
        yield from ray_checks(settings, local_probe)
    finally:
        if local_probe is not None:
            local_probe.kill()

