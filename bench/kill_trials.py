"""Kill trials: every stage killed at a random moment, rerun, and compared with a clean run.

For each stage (ingest, preprocess, train, infer, cluster, report, and the nightly flow as a whole) the store is
put back to what the stage starts from, ``fusion`` runs the stage, and at a random moment (uniform over the
stage's clean duration) either the driver (the ``fusion`` process) or a random Ray worker of the run gets
SIGKILL. The stage is then run again (when the killed attempt did not finish by itself) and the store is
compared with the clean run's: the stage's dataset rows and content hashes, its result table rows, `fsck`.
Each run starts its own local Ray (on 127.0.0.2) and talks to one Prefect server on loopback. The data set is
the demo generator's, a few thousand 32x32 images. Infer runs on its Ray actor pool (as it does at scale); the
cluster and report stages use no Ray, so they have driver trials only. Each run writes a fresh results file
holding the stages it ran, and nothing from an earlier file.

    python bench/kill_trials.py [--stages ingest,...] [--driver-trials 10] [--worker-trials 5] [--per-class 300]

Writes bench/results/kill_trials.json and prints a table: trials, survived, lost rows, duplicated rows, orphans
left (files no commit references; no reader sees them), fsck errors.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from record import run_context, write_results

BIN = Path(sys.executable).parent
STAGES = ("ingest", "preprocess", "train", "infer", "cluster", "report", "nightly")
BEFORE = {"ingest": "empty", "preprocess": "ingest", "train": "preprocess", "infer": "train", "cluster": "infer",
          "report": "cluster", "nightly": "empty"}  # the clean state each stage starts from
OUTPUTS = {"ingest": ["images"], "preprocess": ["pixels"], "train": [], "infer": ["predictions"],
           "cluster": ["clusters"], "report": [], "nightly": ["images", "pixels", "predictions", "clusters"]}
CONTENT = {"images", "pixels"}  # deterministic datasets, compared byte for byte; the rest by rows
SETTINGS = {"ray.num_cpus": 2, "ray.node_ip_address": "127.0.0.2", "ingest.files_per_task": 250,
            "train.epochs": 2, "train.num_workers": 1, "infer.concurrency": 1,
            "infer.in_process_max": 0}  # infer on its Ray actor pool, as at scale, so it has workers to kill
NO_RAY = {"cluster", "report"}  # stages that run in the driver alone: no worker trials
STAGE_TIMEOUT_S = 900


class Bench:
    """The work folder, the store path every trial uses, and a Prefect server for all runs."""

    def __init__(self, workdir: Path, per_class: int):
        from fusion_core.demo_data import generate_demo_images

        self.workdir, self.store = workdir, workdir / "store"
        self.source = workdir / "source"
        generate_demo_images(self.source, per_class=per_class, seed=0)
        self.env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        port = _free_port()
        self.prefect = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                         str(port)], env={**self.env, "PREFECT_HOME": str(workdir / "prefect")},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        _wait_healthy(self.env["PREFECT_API_URL"])
        self.snapshots: dict[str, Path] = {}
        self.clean_s: dict[str, float] = {}
        self.last_run: dict[str, str] = {}  # snapshot -> the run whose report the report stage writes

    def close(self) -> None:
        self.prefect.terminate()
        self.prefect.wait(timeout=60)

    def args(self, stage: str, run_of: str | None = None) -> list[str]:
        sets = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
        if stage == "report":
            return [str(BIN / "fusion"), "report", run_of, "--store", str(self.store)]
        source = ["--source", str(self.source)] if stage in ("ingest", "nightly") else []
        return [str(BIN / "fusion"), "run", stage, *source, "--store", str(self.store), *sets]

    def start(self, stage: str) -> subprocess.Popen:
        log = open(self.workdir / "stage.log", "ab")
        return subprocess.Popen(self.args(stage, self.last_run.get(BEFORE[stage])), env=self.env, stdout=log,
                                stderr=log, start_new_session=True)

    def restore(self, state: str) -> None:
        """Put the store back to a clean state (same path, so the catalog's absolute paths hold)."""
        shutil.rmtree(self.store, ignore_errors=True)
        if state != "empty":
            shutil.copytree(self.snapshots[state], self.store, symlinks=True)

    def prepare(self, stages: list[str]) -> None:
        """Run the stages cleanly in order, keeping the store after each as a snapshot, timing each."""
        needed = _needed_by(stages)
        for stage in [s for s in STAGES if s in needed]:
            self.restore(BEFORE[stage])
            started = time.monotonic()
            proc = self.start(stage)
            if proc.wait(timeout=STAGE_TIMEOUT_S) != 0:
                raise RuntimeError(f"clean {stage} failed; see {self.workdir / 'stage.log'}")
            self.clean_s[stage] = time.monotonic() - started
            _reap(proc)
            self.snapshots[stage] = self.workdir / f"after-{stage}"
            shutil.rmtree(self.snapshots[stage], ignore_errors=True)
            shutil.copytree(self.store, self.snapshots[stage], symlinks=True)
            self.last_run[stage] = _store(self.store).list_runs(1)[0]["run_id"]
            print(f"clean {stage}: {self.clean_s[stage]:.0f} s", flush=True)

    def trial(self, stage: str, target: str, rng: random.Random, attempts: int = 10) -> dict:
        """One trial: kill at a random moment, rerun when needed, compare with the clean run. A draw whose
        moment came after the stage had ended (or, for a worker, when no task ran) is drawn again."""
        for _ in range(attempts):
            self.restore(BEFORE[stage])
            delay = rng.uniform(0.05, 0.95) * self.clean_s[stage]
            proc, started, killed = self.start(stage), time.monotonic(), None
            while proc.poll() is None and time.monotonic() - started < delay:
                time.sleep(0.05)
            while proc.poll() is None and killed is None:
                killed = _kill(proc, target, rng)
                time.sleep(0.05)
            first = _finish(proc)
            if killed:
                break
        else:
            return {"stage": stage, "target": target, "survived": False, "killed": None,
                    "error": f"no kill landed in {attempts} draws"}
        if first is None:
            return {"stage": stage, "target": target, "delay_s": round(delay, 1), "killed": killed,
                    "survived": False, "error": f"the killed run hung (no exit in {STAGE_TIMEOUT_S} s)"}
        reran = first != 0
        if reran:
            second = _finish(self.start(stage))
            if second != 0:
                return {"stage": stage, "target": target, "delay_s": round(delay, 1), "killed": killed,
                        "survived": False, "error": f"the rerun failed (exit {second})"}
        return {"stage": stage, "target": target, "delay_s": round(delay, 1), "killed": killed, "reran": reran,
                **compare(_store(self.store), _store(self.snapshots[stage]), stage)}


def _needed_by(stages: list[str]) -> set[str]:
    """The stages whose clean runs the trials of ``stages`` need: each, and what each starts from."""
    needed = set(stages)
    for stage in stages:
        before = BEFORE[stage]
        while before != "empty":
            needed.add(before)
            before = BEFORE[before]
    return needed


def _kill(proc: subprocess.Popen, target: str, rng: random.Random) -> str | None:
    """SIGKILL the driver, or a random Ray worker process running a task or actor of its session; what was
    killed (None: no such worker yet)."""
    if target == "driver":
        os.kill(proc.pid, signal.SIGKILL)
        return "driver"
    busy = [w for w in _ray_workers(proc.pid)
            if not w[1].startswith(("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent"))]
    if not busy:
        return None  # no task or actor is running yet: the caller looks again
    chosen = rng.choice(busy)
    with contextlib.suppress(ProcessLookupError):
        os.kill(chosen[0], signal.SIGKILL)
    return chosen[1]


def _ray_workers(driver: int) -> list[tuple[int, str]]:
    """``(pid, name)`` of the Ray worker processes below a driver (its local Ray's raylet starts them)."""
    parents, names = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid = int(stat.parent.name)
            parents[pid] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            names[pid] = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    below, grown = set(), {driver}
    while grown:
        below |= grown
        grown = {pid for pid, parent in parents.items() if parent in grown} - below
    return sorted((pid, names[pid]) for pid in below if names.get(pid, "").startswith("ray::"))


def _finish(proc: subprocess.Popen) -> int | None:
    """The run's exit code, or None when it hung past ``STAGE_TIMEOUT_S``; what is left of it is killed."""
    try:
        code = proc.wait(timeout=STAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    _reap(proc)
    return code


def _reap(proc: subprocess.Popen) -> None:
    """Kill what is left of a run's process group (its local Ray's agents outlive a killed driver)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1)


def _store(root: Path):
    from fusion_core.store import Store

    return Store(str(root))


def fingerprint(store, dataset: str) -> tuple[collections.Counter, str | None]:
    """The image ids of a dataset's newest version (a multiset) and, for deterministic datasets, a hash of
    its rows' content."""
    import hashlib

    from fusion_core.datasets import iter_rows

    version = store.latest_version(dataset)
    if version is None:
        return collections.Counter(), None
    paths = [s["path"] for s in version["shards"]]
    columns = ["image_id", "pixels"] if dataset in CONTENT else ["image_id"]
    ids, rows = collections.Counter(), []
    for row in iter_rows(store.root, paths, columns):
        ids[row["image_id"]] += 1
        if dataset in CONTENT:
            rows.append(hashlib.sha256(row["image_id"].encode() + row["pixels"]).hexdigest())
    return ids, hashlib.sha256("".join(sorted(rows)).encode()).hexdigest() if rows else None


def result_ids(store, table: str) -> collections.Counter:
    """Image ids of the rows of a result table written by the newest run that wrote any."""
    stage = {"predictions": "infer", "cluster_assignments": "cluster"}[table]
    for run in store.list_runs(limit=None):
        if run["status"] == "completed" and any(s["stage"] == stage and s["status"] == "completed"
                                                for s in store.get_run(run["run_id"])["stages"]):
            return collections.Counter(r["image_id"] for r in store.query(table, store.results_run(run["run_id"],
                                                                                                   stage)))
    return collections.Counter()


def compare(trial, clean, stage: str) -> dict:
    """Lost and duplicated rows, content differences, fsck errors and orphans of a trial's store."""
    from fusion_core.fsck import check_store

    lost = duplicated = differs = 0
    for dataset in OUTPUTS[stage]:
        (got, got_hash), (want, want_hash) = fingerprint(trial, dataset), fingerprint(clean, dataset)
        lost += sum((want - got).values()) if dataset in CONTENT else len(set(want) - set(got))
        duplicated += sum(n - 1 for n in got.values())
        differs += int(dataset in CONTENT and got_hash != want_hash)
    tables = {"infer": ["predictions"], "cluster": ["cluster_assignments"],
              "nightly": ["predictions", "cluster_assignments"]}.get(stage, [])
    for table in tables:
        got, want = result_ids(trial, table), result_ids(clean, table)
        lost += len(set(want) - set(got))
        duplicated += sum(n - 1 for n in got.values())
    models = collections.Counter(m["key"] for m in trial.list_models())
    duplicated += sum(n - 1 for n in models.values())
    if stage == "train":
        lost += int(not trial.champion())
    if stage == "report":
        lost += int(not list(Path(trial.root, "reports").glob("*/index.html")))
    fsck = check_store(trial)
    survived = lost == 0 and duplicated == 0 and differs == 0 and not fsck.errors
    return {"survived": survived, "lost_rows": lost, "duplicated_rows": duplicated, "content_differs": differs,
            "fsck_errors": len(fsck.errors), "orphans": len(fsck.orphans),
            "errors": [f"{f.kind} {f.path}: {f.detail}" for f in fsck.errors][:5]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(api: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                return
        time.sleep(1)
    raise RuntimeError(f"the Prefect server at {api} did not start")


def run_trials(stages: list[str], driver_trials: int, worker_trials: int, per_class: int, seed: int,
               workdir: Path) -> dict:
    """Every trial of every stage; the per-stage table and each trial's record."""
    bench = Bench(workdir, per_class)
    try:
        bench.prepare(stages)
        rng, trials = random.Random(seed), []
        for stage in stages:
            workers = 0 if stage in NO_RAY else worker_trials
            for target in ["driver"] * driver_trials + ["worker"] * workers:
                trials.append(bench.trial(stage, target, rng))
                print(json.dumps(trials[-1]), flush=True)
    finally:
        bench.close()
    return {"clean_s": {k: round(v, 1) for k, v in bench.clean_s.items()}, "per_class": per_class, "seed": seed,
            "table": summarize(trials, stages), "trials": trials}


def summarize(trials: list[dict], stages: list[str]) -> dict:
    """Per stage and target: trials, those in which a kill landed, and of those the survivors and the damage.
    A trial whose draws all came after the stage ended (or found no busy worker) killed nothing: it is
    counted apart, not as a survivor."""
    table = {}
    for stage in stages:
        for target in ("driver", "worker"):
            mine = [t for t in trials if t["stage"] == stage and t["target"] == target]
            landed = [t for t in mine if t.get("killed")]
            if mine:
                table[f"{stage}/{target}"] = {
                    "trials": len(mine), "killed": len(landed), "survived": sum(t["survived"] for t in landed),
                    **{k: sum(t.get(k, 0) for t in landed) for k in ("lost_rows", "duplicated_rows", "fsck_errors",
                                                                     "orphans")}}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--driver-trials", type=int, default=10)
    parser.add_argument("--worker-trials", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=300, help="demo images per class (10 classes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if unknown := set(stages) - set(STAGES):
        parser.error(f"--stages: unknown {sorted(unknown)} (allowed: {', '.join(STAGES)})")
    context = run_context()
    workdir = Path(tempfile.mkdtemp(prefix="fusion-kill-"))
    result = run_trials(stages, args.driver_trials, args.worker_trials, args.per_class, args.seed, workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with its stage.log, when a clean run failed
    write_results("kill_trials", result, context)
    print(f"\n{'stage/target':<20}{'trials':>7}{'killed':>7}{'survived':>9}{'lost':>6}{'dup.':>6}{'orphans':>8}"
          f"{'fsck err':>9}")
    for name, row in result["table"].items():
        print(f"{name:<20}{row['trials']:>7}{row['killed']:>7}{row['survived']:>9}{row['lost_rows']:>6}"
              f"{row['duplicated_rows']:>6}{row['orphans']:>8}{row['fsck_errors']:>9}")


if __name__ == "__main__":
    sys.exit(main())
