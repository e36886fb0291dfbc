"""The one place that connects to Ray or starts a local instance."""

from __future__ import annotations

import logging
import os

from fusion_core import uri
from fusion_core.config import Settings
from fusion_core.progress import Progress

log = logging.getLogger(__name__)

# Environment every Ray worker needs: tf-keras under MultiWorkerMirroredStrategy (docs/architecture.md).
# Ray Data's own progress bars stay off: Fusion reports progress itself (fusion_core.progress). Ray Train's
# controller polls its workers every 0.5 s instead of 2 s: a worker's report of an epoch waits for the poll
# after its previous one, and the end of a training for the next poll.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
              "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
_dashboard: dict[str, str] = {}  # the Ray dashboard's URL, once this process has connected to Ray


def ensure_ray(settings: Settings):
    """Connect to ``ray.address`` (or ``RAY_ADDRESS``) when set, else start a local Ray sized from config.

    Idempotent: an already initialised Ray is reused. Returns the ``ray`` module.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    os.environ.update(WORKER_ENV)
    address = ray_address(settings)
    # Ray's own log level stays as the caller set it (the `fusion` command: warnings only unless -v).
    kwargs = {"runtime_env": runtime_env(shipped=bool(address)), "log_to_driver": settings.ray.log_to_driver,
              "logging_level": logging.getLogger("ray").level or logging.INFO}
    if settings.ray.node_ip_address:
        kwargs["_node_ip_address"] = settings.ray.node_ip_address
    if address:
        log.info("connecting to Ray cluster at %s", address)
        context = ray.init(address=address, **kwargs)
    else:
        log.info("starting a local Ray (num_cpus=%s)", settings.ray.num_cpus or "all")
        # The dashboard (loopback only) also serves the State API that Ray Train's cleaner polls.
        context = ray.init(num_cpus=settings.ray.num_cpus, dashboard_host="127.0.0.1", **kwargs)
    url = getattr(context, "dashboard_url", None)
    if url:
        _dashboard["url"] = url if uri.is_uri(url) else f"http://{url}"
        log.info("Ray dashboard: %s", _dashboard["url"])
    return ray


def ray_address(settings: Settings) -> str | None:
    """The Ray cluster to connect to (``ray.address``, else ``RAY_ADDRESS``), or None: start a local Ray."""
    return settings.ray.address or os.environ.get("RAY_ADDRESS")


def import_ray():
    """``import ray``, keeping the level of the ``ray`` logger as the caller set it (Ray's first import resets it)."""
    level = logging.getLogger("ray").level
    import ray

    logging.getLogger("ray").setLevel(level)
    return ray


def dashboard_details() -> dict:
    """``{"ray_dashboard": URL}`` once this process has connected to Ray (and the dashboard is on), else ``{}``."""
    return {"ray_dashboard": _dashboard["url"]} if "url" in _dashboard else {}


def remove_leftover_placement_groups() -> int:
    """Remove the placement groups this Ray job still holds; returns how many.

    Called before a training starts: a placement group of this job alive at that moment was left by an earlier
    attempt whose Ray Train controller was killed (its cleaner dies with it), and it would hold CPUs the new
    attempt's workers and data readers need. Other jobs' groups are never touched.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_placement_groups

    context = ray.get_runtime_context()
    try:
        held = list_placement_groups(address=context.gcs_address, filters=[("state", "=", "CREATED")], detail=True,
                                     raise_on_missing_output=False)
    except Exception as err:  # the State API needs the dashboard; without it nothing is cleaned
        log.warning("could not list Ray placement groups: %s", err)
        return 0
    left = [pg for pg in held if pg.creator_job_id == context.get_job_id()]
    for pg in left:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg.placement_group_id)))
        log.warning("removed placement group %s, left by an earlier attempt of this job", pg.placement_group_id)
    return len(left)


def runtime_env(shipped: bool) -> dict:
    """What every Ray worker of a Fusion job gets: ``WORKER_ENV`` and, on a cluster (``shipped``), Fusion's
    own code as a ``py_modules`` package, so a node needs only the pinned dependencies, not Fusion."""
    import fusion_core

    env = {"env_vars": dict(WORKER_ENV)}
    if shipped:
        env.update(py_modules=[os.path.dirname(fusion_core.__file__)], excludes=["__pycache__", "*.pyc"])
    return env


def gather(refs: list, what: str, every_s: float = 5.0) -> list:
    """Wait for Ray object refs, reporting progress (done/total, rate, ETA); results in submission order."""
    import ray

    if not refs:
        return []
    order = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending, progress = list(refs), Progress(what, "tasks", total=len(refs), every_s=every_s)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            results[order[ref]] = ray.get(ref)
        progress.update(len(ready))
    progress.close()
    return results
