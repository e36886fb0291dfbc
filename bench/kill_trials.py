"""Kill trials: every stage killed at a random moment, rerun, and compared with a clean run.

For each stage (ingest, preprocess, train, infer, cluster, mine, report, and the nightly flow as a whole) the store
is put back to what the stage starts from and ``fusion run STAGE`` runs it, as a user would: its own local Ray (on
127.0.0.2) and its own temporary Prefect server. The kill moment is drawn while the stage runs: once the catalog
records the stage's start, after a uniform share of the stage's clean duration, and only if the stage has not
ended. Then SIGKILL goes either to the driver (the ``fusion`` process) or to a process doing the stage's work:
a Ray task that ingests, preprocesses or mines, a Ray Data map worker or inference actor while it predicts, a Ray Train
worker mid-epoch after its first checkpoint, or the training controller (``WORKERS``). Each record says which
process class was killed, what the stage was doing, and how many processes the trial left behind once its runs
ended (its Ray, its Prefect server: none should outlive the run).

The stage is then run again (when the killed attempt did not finish by itself) and the store is compared with
the clean run's by content: images and pixels byte for byte, each image's prediction and confidence, cluster
assignments up to relabelling, the registered model's accuracy within ``model_tolerance`` of the clean run's, the
report's sections;
and ``fusion fsck``. The data set is the demo generator's, a few thousand 32x32 images. Infer runs on its Ray
actor pool (as it does at scale); the cluster and report stages use no Ray, so they have driver trials only.
Each run writes a fresh results file holding the stages it ran, and nothing from an earlier file; it is rewritten
after every trial with ``complete`` false, so a run cut short still records what it measured.

    python bench/kill_trials.py [--stages ingest,...] [--driver-trials 10] [--worker-trials 5] [--per-class 300]

Writes bench/results/kill_trials.json and prints a table: trials, survived, lost rows, duplicated rows, orphans
left (files no commit references; no reader sees them), fsck errors.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import processes
from record import run_context, write_results

BIN = Path(sys.executable).parent
STAGES = ("ingest", "preprocess", "train", "infer", "cluster", "mine", "report", "nightly")
BEFORE = {"ingest": "empty", "preprocess": "ingest", "train": "preprocess", "infer": "train", "cluster": "infer",
          "mine": "cluster", "report": "mine", "nightly": "empty"}  # the clean state each stage starts from
OUTPUTS = {"ingest": ["images"], "preprocess": ["pixels"], "train": [], "infer": ["predictions"],
           "cluster": ["clusters"], "mine": ["mining"], "report": [],
           "nightly": ["images", "pixels", "predictions", "clusters", "mining"]}
CONTENT = {"images", "pixels"}  # deterministic datasets, compared byte for byte; the rest by rows
SETTINGS = {"ray.num_cpus": 2, "ray.node_ip_address": "127.0.0.2", "ingest.files_per_task": 250,
            "train.epochs": 2, "train.num_workers": 1, "infer.concurrency": 1,
            "infer.in_process_max": 0}  # infer on its Ray actor pool, as at scale, so it has workers to kill
NO_RAY = {"cluster", "report"}  # stages that run in the driver alone: no worker trials
STAGE_TIMEOUT_S = 900
# The processes that do each stage's work, by the names Ray gives them (a substring of the process title).
WORKERS = {"ingest": ("ingest_task",), "preprocess": ("preprocess_shard",),
           "train": ("RayTrainWorker", "TrainController", "_fit_and_register_in_task"),
           "infer": ("MapWorker", "MapBatches", "ReadParquet"), "mine": ("_mine_shards",)}
WORKERS["nightly"] = tuple(name for names in WORKERS.values() for name in names)
CONFIDENCE_TOLERANCE = 1e-4


class Bench:
    """The work folder, the store path every trial uses, and the clean runs' snapshots and stage durations."""

    def __init__(self, workdir: Path, per_class: int, prefect_api: str | None = None):
        from fusion_core.demo_data import generate_demo_images

        self.workdir, self.store = workdir, workdir / "store"
        self.source = workdir / "source"
        generate_demo_images(self.source, per_class=per_class, seed=0)
        # Each run starts its own temporary Prefect server, as `fusion run` does for a user (the home is shared),
        # unless ``prefect_api`` names a running server for them all.
        self.env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
                    "PREFECT_HOME": str(workdir / "prefect")}
        for name in ("RAY_ADDRESS", "PREFECT_API_URL"):
            self.env.pop(name, None)
        if prefect_api:
            self.env["PREFECT_API_URL"] = prefect_api
        self.snapshots: dict[str, Path] = {}
        self.clean_s: dict[str, float] = {}  # the stage's own duration in the clean run, from the catalog
        self.last_run: dict[str, str] = {}  # snapshot -> the run whose report the report stage writes

    def args(self, stage: str, run_of: str | None = None) -> list[str]:
        sets = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
        if stage == "report":
            return [str(BIN / "fusion"), "run", "report", "--run", run_of, "--store", str(self.store)]
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
            proc = self.start(stage)
            if _finish(proc) != 0:
                raise RuntimeError(f"clean {stage} failed; see {self.workdir / 'stage.log'}")
            if left := _left_behind(proc):
                print(f"clean {stage} left {len(left)} processes behind: {left[:3]}", flush=True)
            self.snapshots[stage] = self.workdir / f"after-{stage}"
            shutil.rmtree(self.snapshots[stage], ignore_errors=True)
            shutil.copytree(self.store, self.snapshots[stage], symlinks=True)
            self.last_run[stage] = _store(self.store).list_runs(1)[0]["run_id"]
            self.clean_s[stage] = _stage_seconds(self.store / "catalog.db", self.last_run[stage], stage)
            print(f"clean {stage}: {self.clean_s[stage]:.1f} s inside the stage", flush=True)

    def trial(self, stage: str, target: str, rng: random.Random, attempts: int = 10) -> dict:
        """One trial: kill inside the stage, rerun when needed, compare with the clean run. A draw that found the
        stage over (or, for a worker, no working process before it ended) is drawn again."""
        for _ in range(attempts):
            self.restore(BEFORE[stage])
            proc = self.start(stage)
            killed = self.kill_inside(proc, stage, target, rng)
            first = _finish(proc)
            lingered: list = []
            if killed:
                break
            _left_behind(proc)
        else:
            return {"stage": stage, "target": target, "survived": False, "killed": None,
                    "error": f"no kill landed inside the stage in {attempts} draws"}
        # The killed run's processes are watched while the rerun goes on (Ray's agents of a killed driver take
        # about a minute to exit); the rerun's session is another, so the two are counted apart.
        with concurrent.futures.ThreadPoolExecutor(1) as watcher:
            killed_left = watcher.submit(_left_behind, proc, lingered)
            record = {"stage": stage, "target": target, **killed}
            if first is None:
                return {**record, "survived": False, "error": f"the killed run hung (no exit in {STAGE_TIMEOUT_S} s)"}
            reran, left = first != 0, []
            if reran:
                second = self.start(stage)
                code = _finish(second)
                left += _left_behind(second)
                if code != 0:
                    return {**record, "survived": False, "left_behind": len(left),
                            "error": f"the rerun failed (exit {code})"}
            compared = compare(_store(self.store), _store(self.snapshots[stage]), stage)
            left = killed_left.result() + left
        record.update(session_emptied_after_s=lingered[0][0], lingering_after_5s=lingered[0][1][:5])
        return {**record, "reran": reran, "left_behind": len(left), "left_processes": left[:5], **compared,
                "survived": compared["survived"] and not left}

    def kill_inside(self, proc: subprocess.Popen, stage: str, target: str, rng: random.Random) -> dict | None:
        """Wait for the stage to start, then for a drawn share of its clean duration, then SIGKILL the driver or a
        working process while the stage still runs; what was killed and what the stage was doing, or None."""
        catalog = self.store / "catalog.db"
        began = _wait_for(lambda: proc.poll() is not None or _stage_state(catalog, stage) is not None)
        if began is None or proc.poll() is not None:
            return None
        share = rng.uniform(0.05, 0.95)
        moment = time.monotonic() + share * self.clean_s[stage]
        while time.monotonic() < moment and proc.poll() is None:
            time.sleep(0.05)
        while proc.poll() is None:
            doing = _stage_state(catalog, stage)
            if doing is None or not doing.startswith("running"):
                return None  # the stage ended before the kill
            chosen = ("driver", proc.pid) if target == "driver" else _working_process(proc.pid, stage, self.store,
                                                                                        rng)
            if chosen is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(chosen[1], signal.SIGKILL)
                return {"share": round(share, 2), "seconds_into_stage": round(time.monotonic() - began, 1),
                        "killed": chosen[0], "doing": doing}
            time.sleep(0.05)
        return None


def _wait_for(ready, timeout_s: float = STAGE_TIMEOUT_S) -> float | None:
    """Poll until ``ready()``; the monotonic time it became true, or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return time.monotonic()
        time.sleep(0.05)
    return None


def _stage_state(catalog: Path, stage: str) -> str | None:
    """What the newest run's ``stage`` is doing, from the catalog: ``running X`` or ``ended X`` (for the nightly
    flow, X is the stage it is in); None before the stage starts."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1)) as conn:
            run = conn.execute("SELECT run_id, status FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
            rows = [] if run is None else conn.execute(
                "SELECT stage, status FROM run_stages WHERE run_id = ? ORDER BY started_at", (run[0],)).fetchall()
    except sqlite3.Error:
        return None
    if stage == "nightly":
        return (f"{'running' if run[1] == 'running' else 'ended'} {rows[-1][0]}") if rows else None
    mine = [status for name, status in rows if name == stage]
    return f"{'running' if mine[-1] == 'running' else 'ended'} {stage}" if mine else None


def _stage_seconds(catalog: Path, run_id: str, stage: str) -> float:
    """How long ``stage`` (for the nightly flow: all its stages) ran in a completed run, from the catalog."""
    with contextlib.closing(sqlite3.connect(catalog)) as conn:
        query = "SELECT MIN(started_at), MAX(finished_at) FROM run_stages WHERE run_id = ?"
        args = (run_id,) if stage == "nightly" else (run_id, stage)
        first, last = conn.execute(query + ("" if stage == "nightly" else " AND stage = ?"), args).fetchone()
    parse = datetime.datetime.fromisoformat
    return (parse(last) - parse(first)).total_seconds()


def _working_process(driver: int, stage: str, store: Path, rng: random.Random) -> tuple[str, int] | None:
    """A process doing the stage's work now (``WORKERS``); a training worker only once a checkpoint is
    registered, so the kill lands mid-training. None when none is working yet."""
    names = WORKERS[stage]
    busy = [(p.name, p.pid) for p in processes.descendants(driver) if p.name.startswith("ray::")
            and any(n in p.name for n in names) and not p.name.endswith("__init__")]  # working, not starting
    trained = any(store.glob("checkpoints/*/checkpoint_manager_snapshot.json"))
    busy = [(name, pid) for name, pid in busy if "RayTrainWorker" not in name or trained]
    return rng.choice(busy) if busy else None


LINGER_S = 120  # a process of a run's session still alive this long after its driver ended is left behind


def _left_behind(proc: subprocess.Popen, lingered: list | None = None) -> list[str]:
    """Processes of a run's session still alive ``LINGER_S`` after its driver ended (its Ray, its Prefect server):
    the trial leaves them behind. Counted, then killed. ``lingered`` gets ``(seconds until the session emptied,
    what was still alive after 5 s)``."""
    started = time.monotonic()
    late: list[str] = []
    while True:
        left = [p.name for p in processes.session(proc.pid)]
        waited = time.monotonic() - started
        if waited >= 5 and not late:
            late = left
        if not left or waited > LINGER_S:
            break
        time.sleep(0.5)
    if lingered is not None:
        lingered.append((round(waited, 1), late))
    _reap(proc)
    return left


def _needed_by(stages: list[str]) -> set[str]:
    """The stages whose clean runs the trials of ``stages`` need: each, and what each starts from."""
    needed = set(stages)
    for stage in stages:
        before = BEFORE[stage]
        while before != "empty":
            needed.add(before)
            before = BEFORE[before]
    return needed


def _finish(proc: subprocess.Popen) -> int | None:
    """The run's exit code, or None when it hung past ``STAGE_TIMEOUT_S`` (then its session is killed)."""
    try:
        return proc.wait(timeout=STAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _reap(proc)
        return None


def _reap(proc: subprocess.Popen) -> None:
    """Kill every process of a run's session (Ray puts its workers in process groups of their own)."""
    for leftover in processes.session(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(leftover.pid, signal.SIGKILL)
    time.sleep(1)


def _store(root: Path):
    from fusion_core.store import Store

    return Store(str(root))


def fingerprint(store, dataset: str) -> tuple[collections.Counter, str | None]:
    """The image ids of a dataset's newest version (a multiset) and, for deterministic datasets, a hash of
    its rows' content."""
    import hashlib

    from fusion_core.store.datasets import iter_rows

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


def result_rows(store, table: str) -> tuple[collections.Counter, dict[str, dict]]:
    """The rows of a result table written by the newest run that wrote any: a multiset of their image ids, and
    one row per image id."""
    stage = {"predictions": "infer", "cluster_assignments": "cluster"}[table]
    for run in store.list_runs(limit=None):
        if run["status"] == "completed" and any(s["stage"] == stage and s["status"] == "completed"
                                                for s in store.get_run(run["run_id"])["stages"]):
            rows = store.query(table, store.results_run(run["run_id"], stage))
            return collections.Counter(r["image_id"] for r in rows), {r["image_id"]: r for r in rows}
    return collections.Counter(), {}


def prediction_differences(got: dict, want: dict) -> int:
    """Images whose predicted label or confidence (beyond ``CONFIDENCE_TOLERANCE``) differs from the clean run's."""
    return sum(got[i]["predicted"] != row["predicted"]
               or abs(got[i]["confidence"] - row["confidence"]) > CONFIDENCE_TOLERANCE
               for i, row in want.items() if i in got)


def cluster_differences(got: dict, want: dict) -> int:
    """Images whose cluster differs from the clean run's once clusters are matched one to one (cluster numbers
    are arbitrary): each clean cluster maps to the trial cluster most of its images are in."""
    pairs = collections.Counter((row["cluster"], got[i]["cluster"]) for i, row in want.items() if i in got)
    mapping, taken = {}, set()
    for (clean, trial), _ in pairs.most_common():
        if clean not in mapping and trial not in taken:
            mapping[clean] = trial
            taken.add(trial)
    return sum(n for (clean, trial), n in pairs.items() if mapping.get(clean) != trial)


def report_sections(store) -> list[str]:
    """The section headings of the newest report in a store."""
    reports = sorted(Path(store.root, "reports").glob("*/index.html"), key=lambda p: p.parent.name)
    return re.findall(r"<h2>(.*?)</h2>", reports[-1].read_text()) if reports else []


def model_tolerance(metrics: dict) -> float:
    """How far a model trained again may land from the clean run's holdout accuracy by chance alone: three
    standard deviations of the difference between two accuracies ``p`` measured on ``n`` holdout images each,
    ``3 * sqrt(2 p (1 - p) / n)``. A resumed training is not bit-equal to an uninterrupted one, so a rerun's
    model is another draw, not a copy."""
    p, n = metrics["accuracy"], metrics["n"]
    return 3 * math.sqrt(2 * p * (1 - p) / n)


def compare(trial, clean, stage: str) -> dict:
    """Lost and duplicated rows, content differences, the model's accuracy against the clean run's, fsck errors
    and orphans of a trial's store."""
    from fusion_core.tools.fsck import check_store

    lost = duplicated = differs = 0
    for dataset in OUTPUTS[stage]:
        (got, got_hash), (want, want_hash) = fingerprint(trial, dataset), fingerprint(clean, dataset)
        lost += sum((want - got).values()) if dataset in CONTENT else len(set(want) - set(got))
        duplicated += sum(n - 1 for n in got.values())
        differs += int(dataset in CONTENT and got_hash != want_hash)
    models = collections.Counter(m["key"] for m in trial.list_models())
    duplicated += sum(n - 1 for n in models.values())
    accuracy_diff = tolerance = None
    if stage in ("train", "nightly"):
        champion, reference = trial.champion(), clean.champion()
        lost += int(champion is None)
        tolerance = round(model_tolerance(reference["metrics"]), 4)
        if champion is not None:
            accuracy_diff = round(champion["metrics"]["accuracy"] - reference["metrics"]["accuracy"], 4)
    same_model = accuracy_diff in (None, 0.0)  # a retrained model predicts differently, rightly
    tables = {"infer": ["predictions"], "cluster": ["cluster_assignments"],
              "nightly": ["predictions", "cluster_assignments"]}.get(stage, [])
    for table in tables:
        (got_ids, got), (want_ids, want) = result_rows(trial, table), result_rows(clean, table)
        lost += len(set(want_ids) - set(got_ids))
        duplicated += sum(n - 1 for n in got_ids.values())
        if same_model:
            differs += (prediction_differences if table == "predictions" else cluster_differences)(got, want)
    if stage in ("report", "nightly"):
        sections = report_sections(trial)
        lost += int(not sections)
        differs += int(bool(sections) and sections != report_sections(clean))
    fsck = check_store(trial)
    model_ok = accuracy_diff is None or abs(accuracy_diff) <= tolerance
    survived = lost == 0 and duplicated == 0 and differs == 0 and model_ok and not fsck.errors
    return {"survived": survived, "lost_rows": lost, "duplicated_rows": duplicated, "content_differs": differs,
            "model_accuracy_diff": accuracy_diff, "model_tolerance": tolerance, "fsck_errors": len(fsck.errors), "orphans": len(fsck.orphans),
            "errors": [f"{f.kind} {f.path}: {f.detail}" for f in fsck.errors][:5]}


def run_trials(stages: list[str], driver_trials: int, worker_trials: int, per_class: int, seed: int,
               workdir: Path, on_trial=None, prefect_api: str | None = None) -> dict:
    """Every trial of every stage; the per-stage table and each trial's record. ``on_trial`` gets the result so
    far (``complete`` False) after each trial. ``prefect_api``: a Prefect server for every run (the suite's)."""
    bench = Bench(workdir, per_class, prefect_api)
    rng, trials = random.Random(seed), []

    def result(complete: bool) -> dict:
        return {"complete": complete, "clean_s": {k: round(v, 1) for k, v in bench.clean_s.items()},
                "per_class": per_class, "seed": seed, "planned": {"driver": driver_trials, "worker": worker_trials},
                "table": summarize(trials, stages), "trials": trials}

    bench.prepare(stages)
    for stage in stages:
        workers = 0 if stage in NO_RAY else worker_trials
        for target in ["driver"] * driver_trials + ["worker"] * workers:
            trials.append(bench.trial(stage, target, rng))
            print(json.dumps(trials[-1]), flush=True)
            if on_trial:
                on_trial(result(False))
    return result(True)


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
                    **{k: sum(t.get(k, 0) for t in landed) for k in ("lost_rows", "duplicated_rows", "content_differs",
                                                                     "fsck_errors", "orphans", "left_behind")},
                    "killed_processes": dict(collections.Counter(_process_class(t["killed"]) for t in landed))}
    return table


def _process_class(name: str) -> str:
    """``driver``, or the Ray name of a killed worker without its arguments (``ray::RayTrainWorker``)."""
    return name.split("(")[0].split(" ")[0]


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
    result = run_trials(stages, args.driver_trials, args.worker_trials, args.per_class, args.seed, workdir,
                        on_trial=lambda partial: write_results("kill_trials", partial, context))
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with its stage.log, when a clean run failed
    write_results("kill_trials", result, context)
    print(f"\n{'stage/target':<20}{'trials':>7}{'killed':>7}{'survived':>9}{'lost':>6}{'dup.':>6}{'differ':>7}"
          f"{'orphans':>8}{'fsck err':>9}{'left':>6}  killed")
    for name, row in result["table"].items():
        print(f"{name:<20}{row['trials']:>7}{row['killed']:>7}{row['survived']:>9}{row['lost_rows']:>6}"
              f"{row['duplicated_rows']:>6}{row['content_differs']:>7}{row['orphans']:>8}{row['fsck_errors']:>9}"
              f"{row['left_behind']:>6}  {row['killed_processes']}")


if __name__ == "__main__":
    sys.exit(main())
