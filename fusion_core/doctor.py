"""``fusion doctor``: check what a run needs, each check a ``Check`` with a hint for what to do about it.

Light on import: Ray starts only in ``ray_checks``; TensorFlow is imported only by the Ray workers.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import sqlalchemy as sa

from fusion_core import uri
from fusion_core.config import Settings
from fusion_core.store.tables import SCHEMA_VERSION, meta

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
PACKAGES = {"tensorflow": "tensorflow", "tf-keras": "tf-keras", "keras": "keras", "ray": "ray",
            "prefect": "prefect client"}  # distribution: check name
WORKER_TIMEOUT_S = 60.0
INSTALL_HINT = "install Fusion with its pinned versions: pip install -c constraints.txt -e ."


@dataclass(frozen=True)
class Check:
    """One check's outcome; ``hint`` tells the user what to do about a FAIL (or WARN)."""

    name: str
    status: str
    detail: str
    hint: str = ""

    def lines(self) -> list[str]:
        return [f"{self.status} {self.name}: {self.detail}"] + ([f"  hint: {self.hint}"] if self.hint else [])


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL)}
    return f"{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed"


def run_checks(settings: Settings, prefect_url: str | None, prefect_key: str | None = None) -> Iterator[Check]:
    """Every check, quick ones first, as each finishes."""
    yield from versions()
    yield prefect_server(prefect_url, prefect_key)
    yield store_root(settings.store.root)
    yield catalog(settings.store.root, settings.store.db)
    yield from ray_checks(settings)


def _one_line(err: BaseException, secret: str | None = None) -> str:
    """``Type: first line of the message``, short, with ``secret`` masked."""
    text = (str(err).strip().splitlines() or [""])[0][:300]
    if secret:
        text = text.replace(secret, "***")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# versions -------------------------------------------------------------------
def versions() -> list[Check]:
    """Python, Fusion, and the installed versions of the main packages against Fusion's pins."""
    from fusion_core.runs import code_version

    pins = {req.name.lower().replace("_", "-"): req for req in _fusion_requirements()}
    checks = [Check("python", PASS, sys.version.split()[0]), Check("fusion", PASS, code_version())]
    for name, label in PACKAGES.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            checks.append(Check(label, FAIL, "not installed", INSTALL_HINT))
            continue
        pin = pins.get(name)
        if name == "tf-keras" and not _same_minor(found, "tensorflow"):
            checks.append(Check(label, FAIL, f"{found} does not match TensorFlow {version('tensorflow')}",
                                f"install the tf-keras of TensorFlow's version: {INSTALL_HINT}"))
        elif pin is not None and not pin.specifier.contains(found, prereleases=True):
            checks.append(Check(label, WARN, f"{found}, Fusion pins {pin.specifier}", INSTALL_HINT))
        else:
            checks.append(Check(label, PASS, found))
    return checks


def _fusion_requirements() -> list:
    from packaging.requirements import Requirement

    try:
        return [Requirement(r) for r in requires("fusion") or [] if "extra ==" not in r]
    except PackageNotFoundError:
        return []


def _same_minor(found: str, package: str) -> bool:
    """True when ``found`` has the major.minor version of the installed ``package`` (or it is not installed)."""
    try:
        return found.split(".")[:2] == version(package).split(".")[:2]
    except PackageNotFoundError:
        return True


def prefect_server(api_url: str | None, api_key: str | None = None, timeout_s: float = 5.0) -> Check:
    """The Prefect server's version at ``api_url`` (PREFECT_API_URL) against this Prefect client's."""
    if not api_url:
        return Check("prefect server", WARN, "PREFECT_API_URL is not set: each run starts a temporary local "
                                             "server, and `fusion serve` starts one",
                     "set PREFECT_API_URL to a Prefect server to keep run history and schedules")
    request = urllib.request.Request(api_url.rstrip("/") + "/admin/version",
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            server = json.load(resp)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return Check("prefect server", FAIL, f"{api_url} refused the request (HTTP {err.code})",
                         "set PREFECT_API_KEY to a key of that workspace")
        return Check("prefect server", WARN, f"{api_url} answered HTTP {err.code} to /admin/version")
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None)  # a URLError's underlying error
        return Check("prefect server", FAIL, f"cannot reach {api_url}: "
                                             f"{_one_line(reason if isinstance(reason, OSError) else err)}",
                     "start the server (`prefect server start`) or fix PREFECT_API_URL; unset it to run "
                     "without one")
    client = version("prefect")
    if str(server) != client:
        return Check("prefect server", WARN, f"{server} at {api_url}, client {client}",
                     "run the same Prefect version on the server and here")
    return Check("prefect server", PASS, f"{server} at {api_url}")


# store ----------------------------------------------------------------------
def store_root(root: str) -> Check:
    """Write, read back and delete a probe object under ``<root>/.fusion-doctor/``."""
    probe_dir = uri.join(root, ".fusion-doctor")
    probe = uri.join(probe_dir, uuid.uuid4().hex)
    created = [] if uri.is_uri(root) else _missing_dirs(probe_dir)
    data = f"fusion doctor probe {probe}".encode()
    step = "write"
    try:
        uri.write_bytes(probe, data)
        step = "read back"
        if uri.read_bytes(probe) != data:
            raise OSError("the probe read back differs from what was written")
        step = "delete"
        uri.delete_file(probe)
    except Exception as err:
        hint = ("check the bucket and that the credentials (e.g. AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) "
                "allow write, read and delete" if uri.is_uri(root) else
                "check store.root (--store): its folder must be creatable and writable by this user")
        return Check("store root", FAIL, f"cannot {step} {probe}: {_one_line(err)}", hint)
    finally:
        for folder in created:  # the doctor leaves no folder it made
            try:
                folder.rmdir()
            except OSError:
                break
    new = " (it did not exist: the first run creates it)" if len(created) > 1 else ""  # the root and its probe folder
    return Check("store root", PASS, f"wrote, read back and deleted a probe under {root}{new}")


def _missing_dirs(path: str) -> list[Path]:
    """The folders of a local path that do not exist yet, deepest first."""
    missing, folder = [], Path(uri.filesystem(path)[1])
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def catalog(root: str, db: str | None, timeout_s: int = 5) -> Check:
    """Connect to the catalog database and compare its schema version with this Fusion's; never creates one."""
    if db is None:
        if uri.is_uri(root):
            return Check("catalog", FAIL, "store.db is not set and store.root is a URI",
                         "set store.db to a shared database, e.g. postgresql+psycopg://user@host/fusion")
        db = f"sqlite:///{Path(root).resolve() / 'catalog.db'}"
    try:
        url = sa.engine.make_url(db)
    except sa.exc.ArgumentError:
        return Check("catalog", FAIL, "store.db is not a database URL",
                     "set store.db to a SQLAlchemy URL, e.g. postgresql+psycopg://user@host/fusion")
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).exists():
        return Check("catalog", WARN, f"no catalog yet at {url.database}; the first run creates it")
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": timeout_s}
                                  if url.get_backend_name() == "postgresql" else {})
        try:
            with engine.connect() as conn:
                found = None
                if sa.inspect(conn).has_table(meta.name):
                    found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        finally:
            engine.dispose()
    except (sa.exc.SQLAlchemyError, ImportError) as err:
        reason = _one_line(getattr(err, "orig", None) or err, url.password)
        return Check("catalog", FAIL, f"cannot open {shown}: {reason}",
                     "check store.db (host, port, database, user, password, driver) and that the database "
                     "accepts connections from this machine")
    if found is None:
        return Check("catalog", WARN, f"no catalog yet in {shown}; the first run creates it")
    return schema_check(int(found), SCHEMA_VERSION, shown)


def schema_check(found: int, current: int, where: str) -> Check:
    """The catalog's schema version ``found`` against this Fusion's ``current``."""
    if found == current:
        return Check("catalog", PASS, f"schema version {found} in {where}")
    if found < current:
        return Check("catalog", WARN, f"schema version {found} in {where}, this Fusion's is {current}: "
                                      "migrates on first open")
    return Check("catalog", FAIL, f"schema version {found} in {where}, this Fusion's is {current}: "
                                  "this Fusion is older than the catalog",
                 "install the Fusion version that wrote the catalog (or newer)")


# Ray ------------------------------------------------------------------------
def ray_checks(settings: Settings) -> Iterator[Check]:
    """Connect to (or start) Ray, then report its nodes and resources and what its workers import."""
    import ray

    from fusion_core.ray_runtime import ensure_ray

    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    if address and (unreachable := _unreachable(address)):
        yield Check("ray cluster", FAIL, f"cannot reach {address}: {unreachable}",
                    "start the cluster's head (`ray start --head`) or fix ray.address / RAY_ADDRESS")
        return
    if address and (refused := _token_refused(address)):
        yield _ray_failed(address, refused)
        return
    started_here = not ray.is_initialized()
    try:
        try:
            ensure_ray(settings)
        except Exception as err:
            yield _ray_failed(address, err)
            return
        where = f"connected to {address}" if address else "no ray.address or RAY_ADDRESS set: started a local Ray"
        yield Check("ray cluster", PASS, f"{where} (Ray {ray.__version__})")
        nodes = [n for n in ray.nodes() if n["Alive"]]
        resources = ray.cluster_resources()
        yield ray_resources(len(nodes), resources, settings)
        yield from worker_checks(_probe_workers(ray, nodes), fusion_identity(), settings.train.use_gpu,
                                 resources.get("GPU", 0))
    finally:
        if started_here:
            ray.shutdown()


def _unreachable(address: str) -> str | None:
    """Why ``host:port`` (or ``ray://host:port``) takes no TCP connection, or None (also for ``auto``)."""
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        return _one_line(err)
    return None


def _token_refused(address: str) -> Exception | None:
    """The cluster's refusal of this process's token (at once; ``ray.init`` retries before it gives up)."""
    from ray.exceptions import AuthenticationError

    if "://" in address or ":" not in address:
        return None
    try:
        from ray._raylet import GcsClient  # what ray.init uses to reach the head

        GcsClient(address=address)
    except AuthenticationError as err:
        return err
    except Exception:  # anything else: ray.init reports it
        return None
    return None


def _ray_failed(address: str | None, err: Exception) -> Check:
    from ray.exceptions import AuthenticationError

    target = f"cannot connect to {address}" if address else "cannot start a local Ray"
    message = err.message if isinstance(err, AuthenticationError) else str(err)
    said = f"{message} {err.__cause__ or ''}".lower()
    if isinstance(err, AuthenticationError) or "token" in said or "authenticat" in said:
        return Check("ray cluster", FAIL, f"{target}: {type(err).__name__}: {(message.splitlines() or [''])[0][:300]}",
                     "the cluster uses token authentication: set RAY_AUTH_MODE=token and the cluster's "
                     "RAY_AUTH_TOKEN here (the same on the head and every node)")
    return Check("ray cluster", FAIL, f"{target}: {_one_line(err)}",
                 "check ray.address / RAY_ADDRESS, and that this machine runs the cluster's Ray and Python versions")


def ray_resources(num_nodes: int, resources: dict, settings: Settings) -> Check:
    """Nodes, CPUs and GPUs, and whether they hold the training workers ``train`` asks for."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    detail = f"{num_nodes} node{'s' * (num_nodes != 1)}; CPU {cpus:g}, GPU {gpus:g}"
    train = settings.train
    per_worker = train.resources_per_worker or ({"GPU": 1} if train.use_gpu else {"CPU": 1})
    short = [f"{need * train.num_workers:g} {kind}" for kind, need in per_worker.items()
             if resources.get(kind, 0) < need * train.num_workers]
    if short:
        return Check("ray resources", WARN, f"{detail}; train.num_workers={train.num_workers} needs {', '.join(short)}",
                     "lower train.num_workers (--workers) or add nodes: training waits until its workers fit")
    return Check("ray resources", PASS, detail)


def fusion_identity() -> dict:
    """The Fusion this process imports: ``fusion`` (its code version) and ``code``, a hash of its source files.

    Code shipped to a worker (``py_modules``) carries no git information, so the code, not the version, is compared.
    """
    import hashlib

    import fusion_core
    from fusion_core.runs import code_version

    package, digest = Path(fusion_core.__file__).parent, hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return {"fusion": code_version(), "code": digest.hexdigest()[:12]}


def worker_report() -> dict:
    """Run on a Ray worker: its node, the Fusion it imports and what TensorFlow sees there."""
    import ray

    report = {"node": ray.util.get_node_ip_address(), **fusion_identity()}
    try:
        import tensorflow as tf

        report["tensorflow"] = tf.__version__
        report["gpus"] = len(tf.config.list_physical_devices("GPU"))
    except Exception as err:
        report["tf_error"] = _one_line(err)
    return report


def _probe_workers(ray, nodes: list[dict]) -> list[dict]:
    """One ``worker_report`` per alive node (taking no CPU or GPU); ``error`` for a node that did not answer."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(worker_report)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote():
            n["NodeManagerAddress"] for n in nodes}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=WORKER_TIMEOUT_S)
    reports = []
    for ref, node in refs.items():
        if ref not in ready:
            reports.append({"node": node, "error": f"no answer within {WORKER_TIMEOUT_S:g} s"})
            continue
        try:
            reports.append(ray.get(ref))
        except Exception as err:
            cause = getattr(err, "cause", None)
            reports.append({"node": node, "error": _one_line(cause or err)})
    return reports


def worker_checks(reports: list[dict], driver: dict, use_gpu: bool, ray_gpus: float = 0) -> list[Check]:
    """Judge the workers' reports: each must run this Fusion's code (``driver``, a ``fusion_identity``) and
    import TensorFlow; GPUs when ``train.use_gpu``."""
    broken = [f"{r['node']}: {r['error']}" for r in reports if "error" in r]
    if broken:
        return [Check("workers", FAIL, f"{len(broken)} of {len(reports)} nodes failed: {'; '.join(broken[:3])}",
                      "install Fusion on every node, or ship it with the job's runtime_env (working_dir / "
                      "py_modules), and start the nodes with this Ray and Python")]
    other = [f"{r['node']} imports {r['fusion']} (code {r['code']})" for r in reports if r["code"] != driver["code"]]
    if other:
        return [Check("workers", FAIL, f"Fusion {driver['fusion']} (code {driver['code']}) here, but "
                                       f"{'; '.join(other[:3])}",
                      "install the same Fusion version on every node, or ship the code with runtime_env "
                      "(working_dir / py_modules)")]
    no_tf = [f"{r['node']}: {r['tf_error']}" for r in reports if "tf_error" in r]
    if no_tf:
        return [Check("workers", FAIL, f"TensorFlow does not import on {'; '.join(no_tf[:3])}", INSTALL_HINT)]
    tf_versions = sorted({r["tensorflow"] for r in reports})
    nodes = "1 node imports" if len(reports) == 1 else f"{len(reports)} nodes import"
    checks = [Check("workers", PASS, f"{nodes} this Fusion (code {driver['code']}) and TensorFlow "
                                     f"{', '.join(tf_versions)}")]
    gpus = sum(r["gpus"] for r in reports)
    if use_gpu and not gpus:
        checks.append(Check("worker gpus", FAIL, "train.use_gpu is set but TensorFlow sees no GPU on any node",
                            "train on CPUs (--no-gpu) or add GPU nodes with CUDA drivers TensorFlow supports"))
    elif ray_gpus and gpus < ray_gpus:
        checks.append(Check("worker gpus", WARN, f"Ray counts {ray_gpus:g} GPUs, TensorFlow sees {gpus}",
                            "check the CUDA drivers and libraries on the GPU nodes"))
    elif gpus:
        checks.append(Check("worker gpus", PASS, f"TensorFlow sees {gpus} GPUs"
                                                 + ("" if use_gpu else "; train.use_gpu is off (--gpu uses them)")))
    else:
        checks.append(Check("worker gpus", PASS, "no GPUs: training runs on CPUs"))
    return checks
