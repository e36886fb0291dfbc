"""The checks that need Ray: the cluster, its resources, and what its workers can import."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from fusion_core import uri
from fusion_core.config import Settings
from fusion_core.tools.doctor.check import FAIL, INSTALL_HINT, PASS, WARN, WORKER_TIMEOUT_S, Check, one_line


# Run by a child of this Python: what a local Ray's workers, which run the same Python, import.
LOCAL_PROBE = ("import json; from fusion_core.tools.doctor.cluster import machine_report; "
               "print(json.dumps(machine_report()))")


def start_local_probe() -> subprocess.Popen:
    """Start asking this machine's Python what it imports (``machine_report``), while the other checks run."""
    return subprocess.Popen([sys.executable, "-c", LOCAL_PROBE], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def ray_checks(settings: Settings, local_probe: subprocess.Popen | None = None) -> Iterator[Check]:
    """Connect to (or start) Ray, then report its nodes and resources and what its workers import: asked of a
    task on each node of a cluster, of ``local_probe`` (a ``start_local_probe``) for a local Ray."""
    from fusion_core.ray_runtime import ensure_ray, import_ray, ray_address

    ray = import_ray()
    address = ray_address(settings)
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
        reports = _probe_workers(ray, nodes) if local_probe is None else [_local_report(local_probe)]
        yield from worker_checks(reports, fusion_identity(), settings.train.use_gpu, resources.get("GPU", 0))
    finally:
        if started_here:
            ray.shutdown()


def _unreachable(address: str) -> str | None:
    """Why ``host:port`` (or ``ray://host:port``) takes no TCP connection, or None (also for ``auto``)."""
    host, sep, port = uri.without_scheme(address).rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        return one_line(err)
    return None


def _token_refused(address: str) -> Exception | None:
    """The cluster's refusal of this process's token (at once; ``ray.init`` retries before it gives up)."""
    from ray.exceptions import AuthenticationError

    if uri.is_uri(address) or ":" not in address:
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
    return Check("ray cluster", FAIL, f"{target}: {one_line(err)}",
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

    from fusion_core.data.runs import code_version
    import fusion_core

    package, digest = Path(fusion_core.__file__).parent, hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return {"fusion": code_version(), "code": digest.hexdigest()[:12]}


def worker_report() -> dict:
    """Run on a Ray worker: its node and ``machine_report``."""
    import ray

    return {"node": ray.util.get_node_ip_address(), **machine_report()}


def machine_report() -> dict:
    """The Fusion this Python imports and what TensorFlow sees here."""
    report = fusion_identity()
    try:
        import tensorflow as tf

        report["tensorflow"] = tf.__version__
        report["gpus"] = len(tf.config.list_physical_devices("GPU"))
    except Exception as err:
        report["tf_error"] = one_line(err)
    return report


def _local_report(probe: subprocess.Popen) -> dict:
    """The ``machine_report`` a ``start_local_probe`` printed, or why there is none."""
    try:
        out, _ = probe.communicate(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        probe.kill()
        return {"node": "this machine", "error": f"no answer within {WORKER_TIMEOUT_S:g} s"}
    try:
        return {"node": "this machine", **json.loads(out.strip().splitlines()[-1])}
    except (ValueError, IndexError):
        return {"node": "this machine", "error": f"Python exited with code {probe.returncode} before it reported"}


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
            reports.append({"node": node, "error": one_line(cause or err)})
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
