"""The derived-stage pattern: input version -> idempotency key -> reuse or compute -> commit.

Preprocess, train, infer and cluster each derive an output from explicit input versions. The
output is keyed by those versions and the settings that shape it, so a rerun with the same inputs
reuses what an earlier run committed instead of computing it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fusion_core.store import Store

log = logging.getLogger(__name__)


def derivation_key(*parts) -> str:
    """The idempotency key of an output: its inputs and settings, e.g. ``images:3:1a2b3c``."""
    return ":".join(str(p) for p in parts)


def derive_dataset(store: Store, dataset: str, key: str, run_id: str,
                   build: Callable[[], tuple[list[dict], dict]]) -> tuple[dict, bool]:
    """The version of ``dataset`` derived under ``key``: the one committed before, or a new one.

    Args:
        build: writes the shards and returns ``(manifest, info)``; the version is committed here.
    Returns:
        ``(committed version, reused)``.
    """
    found = store.find_version(dataset, key)
    if found is not None:
        log.info("%s v%d already derived from %s: reused", dataset, found["version"], key)
        return found, True
    manifest, info = build()
    version = store.commit_version(dataset, manifest, run_id, key=key, info=info)
    return store.get_version(dataset, version), False


def derive_model(store: Store, key: str, build: Callable[[], dict], reuse: bool = True) -> tuple[dict, bool]:
    """The model registered under ``key`` (when ``reuse``), or the one ``build`` registers.

    Returns:
        ``(model row, reused)``.
    """
    found = store.find_model(key) if reuse else None
    if found is not None:
        log.info("model v%d already trained from %s: reused", found["version"], key)
        return found, True
    return build(), False
