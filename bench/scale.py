"""Scale: the nightly flow on generated images at 10k, 100k and 1M, per stage, in one run.

For each size the demo generator draws the images (kept under --data for the next run), then
`fusion run nightly` runs in a child process on a fresh store, with one training epoch on one
worker. Every 0.2 s the bench samples the whole run's memory (the sum of the proportional set sizes of
the child and every process descended from it: Ray's workers, actors and services, among them the
trainer's driver-side task, and the temporary Prefect server), the driver's resident memory (the child
alone), the machine's used memory and Ray's object store (/dev/shm), and reads from the catalog which
stage is running; each stage's seconds come from the catalog. The baseline is the same flow at the next
smaller size in the same run: a stage scales when its per-image time stays within 1.25x.

    python bench/scale.py [--sizes 10000,100000,1000000] [--data bench/data/scale] [--epochs 1]

On a cluster, add 10000000 to --sizes, set RAY_ADDRESS, and give --work a folder every node
shares (the stores are made there). Writes bench/results/scale.json and bench/results/scale.png; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import processes
from record import run_context, write_results

HERE = Path(__file__).resolve().parent
STAGES = ("ingest", "preprocess", "train", "infer", "cluster", "report")
CLASSES = 10


def _generate_part(root: str, per_class: int, seed: int, index: int) -> None:
    """One part of the collection: a full set of class folders, drawn with its own seed."""
    from fusion_core.demo_data import generate_demo_images

    generate_demo_images(Path(root) / f"part-{index}", per_class=per_class, seed=seed * 100 + index, corrupt=0)


def generated(data: Path, images: int) -> Path:
    """``images`` demo images under ``data/<images>/`` (drawn once; 10 classes, 10% with holes)."""
    folder = data / str(images)
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    parts = max(1, images // 50_000)  # parallel parts, each a full set of class folders
    per_class = images // CLASSES // parts
    started = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_generate_part, [str(folder)] * parts, [per_class] * parts, [images] * parts, range(parts)))
    _merge_parts(folder, parts)
    done.touch()
    print(f"generated {images} images in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def _merge_parts(folder: Path, parts: int) -> None:
    """Move ``part-i/<class>/x`` to ``<class>/i-x`` so labels come from the first-level folders."""
    for i in range(parts):
        part = folder / f"part-{i}"
        for cls in part.iterdir():
            (folder / cls.name).mkdir(exist_ok=True)
            for f in cls.iterdir():
                f.rename(folder / cls.name / f"{i}-{f.name}")
            cls.rmdir()
        part.rmdir()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _tree_pss_mb(root: int) -> float:
    """The proportional set size of ``root`` and its descendants, summed (shared pages counted once)."""
    total = 0
    for proc in processes.descendants(root):
        try:
            with open(f"/proc/{proc.pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024


def _machine_used_mb() -> float:
    info = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, value = line.split(":")
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def _shm_mb() -> float:
    return shutil.disk_usage("/dev/shm").used / 2**20


def _running_stage(catalog: Path) -> str | None:
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT stage FROM run_stages WHERE status = 'running' "
                               "ORDER BY started_at DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


class Sampler(threading.Thread):
    """Peak memory figures of a child process and its descendants, per running stage, sampled every 0.2 s."""

    def __init__(self, pid: int, catalog: Path):
        super().__init__(daemon=True)
        self.pid, self.catalog, self.stop = pid, catalog, threading.Event()
        self.peaks: dict[str, dict[str, float]] = {}
        self.samples, self.seconds = 0, 0.0

    def run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # reading smaps costs CPU: yield it
        started = time.perf_counter()
        while not self.stop.wait(0.2):
            self.samples += 1
            self.seconds = time.perf_counter() - started
            try:
                sample = {"driver_peak_rss_mb": _rss_mb(self.pid), "run_peak_pss_mb": _tree_pss_mb(self.pid),
                          "machine_peak_mb": _machine_used_mb(), "object_store_peak_mb": _shm_mb()}
            except OSError:
                return
            for stage in ("nightly", _running_stage(self.catalog)):
                if stage:
                    peak = self.peaks.setdefault(stage, dict.fromkeys(sample, 0.0))
                    for key, value in sample.items():
                        peak[key] = max(peak[key], value)


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_size(images: int, source: Path, work: Path, args) -> list[dict]:
    """The nightly flow on ``source``: one row per stage plus ``nightly``."""
    store = work / f"store-{images}"
    fusion = Path(sys.executable).with_name("fusion")
    cmd = [str(fusion), "run", "nightly", "--source", str(source), "--store", str(store),
           "--set", f"train.epochs={args.epochs}", "--set", "train.num_workers=1", "--set", "train.batch_size=256"]
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "FUSION_RAY__NODE_IP_ADDRESS":
           os.environ.get("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")}
    started = time.perf_counter()
    with open(work / f"nightly-{images}.log", "w") as log:
        child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(child.pid, store / "catalog.db")
        sampler.start()
        code = child.wait()
        sampler.stop.set()
        sampler.join()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the nightly flow failed on {images} images; see {work / f'nightly-{images}.log'}")
    with sqlite3.connect(store / "catalog.db") as conn:
        run_id, = conn.execute("SELECT run_id FROM runs WHERE flow = 'nightly' ORDER BY started_at DESC").fetchone()
        stage_seconds = {stage: json.loads(metrics or "{}").get("seconds") for stage, metrics in
                         conn.execute("SELECT stage, metrics FROM run_stages WHERE run_id = ?", (run_id,))}
    store_mb = round(_du_mb(store), 1)
    rows = []
    for stage in (*STAGES, "nightly"):
        took = seconds if stage == "nightly" else stage_seconds.get(stage)
        peaks = sampler.peaks.get(stage, {})
        rows.append({"images": images, "stage": stage, "seconds": round(took, 2) if took else None,
                     "sample_interval_s": round(sampler.seconds / max(sampler.samples, 1), 3),
                     "images_per_s": round(images / took, 1) if took else None,
                     **{k: round(v, 1) for k, v in peaks.items()}, "store_mb": store_mb})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Seconds against images per stage, log-log, with a linear reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for stage in (*STAGES, "nightly"):
        points = [(r["images"], r["seconds"]) for r in rows if r["stage"] == stage and r["seconds"]]
        if points:
            ax.plot(*zip(*points), marker="o", label=stage)
    sizes = sorted({r["images"] for r in rows})
    first = next((r["seconds"] for r in rows if r["stage"] == "nightly" and r["images"] == sizes[0]), None)
    if first and len(sizes) > 1:
        ax.plot(sizes, [first * s / sizes[0] for s in sizes], ls=":", color="grey", label="linear")
    ax.set(xscale="log", yscale="log", xlabel="images", ylabel="seconds", title="nightly flow, per stage")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)


def goals(rows: list[dict]) -> list[str]:
    """Each goal of the scale issue, met or not, from the two largest sizes measured."""
    sizes = sorted({r["images"] for r in rows})
    if len(sizes) < 2:
        return []
    small, large = sizes[-2], sizes[-1]
    at = {(r["images"], r["stage"]): r for r in rows}
    out = []
    for stage in STAGES:
        a, b = at[(small, stage)], at[(large, stage)]
        if a["seconds"] and b["seconds"]:
            ratio = (b["seconds"] / large) / (a["seconds"] / small)
            out.append(f"{stage}: per-image time at {large} is {ratio:.2f}x that at {small} "
                       f"({'met' if ratio <= 1.25 else 'not met'}, goal <= 1.25x)")
    rss = [at[(s, "nightly")].get("driver_peak_rss_mb") for s in (small, large)]
    if all(rss):
        ok = rss[1] <= 1.5 * rss[0] and rss[1] < 2048
        out.append(f"driver peak RSS {rss[0]:.0f} MB -> {rss[1]:.0f} MB ({rss[1] / rss[0]:.2f}x; "
                   f"{'met' if ok else 'not met'}, goal <= 1.5x and < 2 GB)")
    ingest = [at[(s, "ingest")].get("driver_peak_rss_mb") for s in (small, large)]
    if all(ingest):
        out.append(f"ingest's driver peak {ingest[0]:.0f} MB -> {ingest[1]:.0f} MB ({ingest[1] / ingest[0]:.2f}x; "
                   f"{'met' if ingest[1] <= 1.2 * ingest[0] else 'not met'}, goal <= 1.2x)")
    run = [at[(s, "nightly")].get("run_peak_pss_mb") for s in (small, large)]
    if all(run):
        out.append(f"whole-run peak {run[0]:.0f} MB -> {run[1]:.0f} MB ({run[1] / run[0]:.2f}x), all processes of the "
                   f"run (PSS)")
    machine = at[(large, "nightly")].get("machine_peak_mb")
    if machine:
        out.append(f"machine peak {machine:.0f} MB at {large} ({'met' if machine < 24 * 1024 else 'not met'}, "
                   "goal: within 24 GB)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated image counts")
    parser.add_argument("--data", type=Path, default=HERE / "data" / "scale", help="generated images are kept here")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (the budget that keeps it practical)")
    parser.add_argument("--work", type=Path, help="where the stores are made (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    context = run_context()
    work = Path(tempfile.mkdtemp(prefix="fusion-bench-scale-", dir=args.work))
    rows = []
    for images in sizes:
        source = generated(args.data, images)
        print(f"--- {images} images", flush=True)
        rows += run_size(images, source, work, args)
        for r in rows[-len(STAGES) - 1:]:
            print(f"{r['stage']:<11} {r['seconds'] or 0:>9.1f} s {r['images_per_s'] or 0:>10.0f} img/s "
                  f"driver {r.get('driver_peak_rss_mb', 0):>7.0f} MB  run {r.get('run_peak_pss_mb', 0):>7.0f} MB  "
                  f"machine {r.get('machine_peak_mb', 0):>7.0f} MB  "
                  f"object store {r.get('object_store_peak_mb', 0):>6.0f} MB", flush=True)
        shutil.rmtree(work / f"store-{images}", ignore_errors=True)
    results = write_results("scale", {"rows": rows, "goals": goals(rows)}, context)
    plot(rows, results.with_suffix(".png"))
    print(f"\n{'images':>9} {'stage':<11} {'seconds':>9} {'img/s':>9} {'driver MB':>10} {'run MB':>9} "
          f"{'machine MB':>11} {'store MB':>9}")
    for r in rows:
        print(f"{r['images']:>9} {r['stage']:<11} {r['seconds'] or 0:>9.1f} {r['images_per_s'] or 0:>9.0f} "
              f"{r.get('driver_peak_rss_mb', 0):>10.0f} {r.get('run_peak_pss_mb', 0):>9.0f} "
              f"{r.get('machine_peak_mb', 0):>11.0f} {r['store_mb']:>9.0f}")
    print("\n" + "\n".join(goals(rows)))
    print(f"wrote {results} and {results.with_suffix('.png')}")


if __name__ == "__main__":
    main()
