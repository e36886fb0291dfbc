"""Ingest benchmark: Fusion's ingest against ``ray.data.read_images(folder).write_parquet(out)``.

On the CIFAR-10 train JPEGs (unpacked from ``train.tar.gz`` into ``--data`` if
missing), in one run on one local Ray:

* Fusion's ingest of the folder, end to end into a committed Parquet version;
* the Ray Data baseline on the same folder;
* the decode limit: the fastest single-process decode loop over the files'
  bytes already in memory (Pillow and OpenCV are tried), times the cores;
* Fusion's ingest straight from ``train.tar.gz``;
* the pixel layouts Fusion could store, written with zstd (write time, size).

Ray is started and warmed up (workers, imports) on a small folder before
anything is timed. Prints a table and writes ``bench/results/ingest.json``.

    .venv/bin/python bench/ingest.py                # the full 50,000 images
    .venv/bin/python bench/ingest.py --limit 5000   # a quick look on a subset
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from record import RESULTS, run_context, write_results

REPO = Path(__file__).resolve().parent.parent
ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg" / "train.tar.gz"


def unpack_if_missing(archive: Path, data: Path) -> Path:
    """The ``train`` folder under ``data``, unpacked from the archive first if it is not there."""
    folder = data / "train"
    if not folder.is_dir():
        print(f"unpacking {archive} into {data}")
        data.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tf:
            tf.extractall(data, filter="data")
    return folder


def subset(folder: Path, limit: int, work: Path) -> tuple[Path, Path]:
    """Every k-th file of the folder (hard links, same classes) and the same files as a tar.gz."""
    files = sorted(folder.rglob("*.jpg"))
    picked = files[:: max(1, len(files) // limit)][:limit]
    out = work / "train"
    for f in picked:
        dst = out / f.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dst)
    archive = work / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(out, arcname="train")
    return out, archive


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants (Ray's raylet, workers, ...) while running."""

    def __init__(self, every_s: float = 0.05):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            parent, rss = {}, {}
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                try:
                    with open(f"/proc/{pid}/stat") as fh:
                        parent[pid] = int(fh.read().rsplit(")", 1)[1].split()[1])
                    with open(f"/proc/{pid}/statm") as fh:
                        rss[pid] = int(fh.read().split()[1]) * page
                except (OSError, ValueError, IndexError):
                    continue
            mine, grew = {os.getpid()}, True
            while grew:
                before = len(mine)
                mine |= {p for p, pp in parent.items() if pp in mine}
                grew = len(mine) > before
            self.peak = max(self.peak, sum(rss.get(p, 0) for p in mine))
            time.sleep(self.every_s)


def decode_limit(datas: list[bytes], cores: int) -> tuple[float, dict]:
    """Images/s of the fastest single-process decode loop over in-memory bytes, times ``cores``."""
    import cv2
    from PIL import Image

    def pillow(d):
        with Image.open(io.BytesIO(d)) as img:
            return np.asarray(img.convert("RGB"))

    loops = {"pillow": pillow,
             "opencv": lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED)}
    rates = {}
    for name, fn in loops.items():
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            for d in datas:
                fn(d)
            best = min(best, time.perf_counter() - start)
        rates[name] = len(datas) / best
    return max(rates.values()) * cores, rates


def layouts(datas: list[bytes], work: Path) -> list[dict]:
    """Write the decoded images in each candidate pixel layout (zstd Parquet): seconds per image and bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusion_core.data.decode import decode_image

    pixels = [decode_image(d, 10**8)[0] for d in datas]
    raw = [p.tobytes() for p in pixels]
    shape = pixels[0].shape
    stacked = np.stack(pixels)
    candidates = {
        "binary (raw HWC bytes)": lambda: pa.array(raw, pa.binary()),
        "fixed_size_binary": lambda: pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(len(raw[0])), len(raw), [None, pa.py_buffer(stacked.tobytes())]),
        "fixed_shape_tensor": lambda: pa.FixedShapeTensorArray.from_numpy_ndarray(stacked),
        "list<uint8> (variable)": lambda: pa.array([p.reshape(-1) for p in pixels], pa.list_(pa.uint8())),
        "encoded (source JPEG bytes)": lambda: pa.array(datas, pa.binary()),
    }
    out = []
    for name, build in candidates.items():
        start = time.perf_counter()
        table = pa.table({"pixels": build()})
        path = work / "layout.parquet"
        pq.write_table(table, path, compression="zstd")
        took = time.perf_counter() - start
        out.append({"layout": name, "write_us_per_image": took / len(datas) * 1e6,
                    "bytes_per_image": path.stat().st_size / len(datas)})
    assert all(p.shape == shape for p in pixels)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="CIFAR-10 train.tar.gz")
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "data", help="where train/ is (unpacked if missing)")
    parser.add_argument("--limit", type=int, default=None, help="use a subset of this many files")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPUs for Ray and the decode limit")
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.json")
    args = parser.parse_args()
    context = run_context()
    logging.basicConfig(level=logging.WARNING)

    import ray

    from fusion_core.config import load_settings
    from fusion_core.ray_runtime import ensure_ray
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.store import Store

    work = Path(tempfile.mkdtemp(prefix="fusion-bench-ingest-"))
    try:
        folder, archive = unpack_if_missing(args.archive, args.data), args.archive
        if args.limit:
            folder, archive = subset(folder, args.limit, work / "subset")
        files = sorted(folder.rglob("*.jpg"))
        datas = [f.read_bytes() for f in files]
        n, mb = len(files), sum(map(len, datas)) / 1e6
        print(f"{n} files, {mb:.1f} MB, {args.cores} cores")

        def settings(name):
            return load_settings(None, {"store.root": str(work / name), "ray.num_cpus": args.cores,
                                        "ray.node_ip_address": os.environ.get("FUSION_RAY__NODE_IP_ADDRESS")})

        ensure_ray(settings("warm"))
        warm, _ = subset(folder, 500, work / "warm")
        warm_settings = settings("warm").model_copy(update={"ingest": settings("warm").ingest.model_copy(
            update={"files_per_task": 50})})
        # every worker started, modules imported
        ingest_source(warm_settings, Store.from_settings(warm_settings), str(warm), "warm-up")
        ray.data.read_images(str(warm)).write_parquet(str(work / "warm-ray"))

        limit, loops = decode_limit(datas, args.cores)

        with PeakRSS() as idle:
            time.sleep(0.5)
        with PeakRSS() as rss:
            start = time.perf_counter()
            fusion_settings = settings("fusion")
            store = Store.from_settings(fusion_settings)  # opening the catalog is part of the end-to-end figure
            result = ingest_source(fusion_settings, store, str(folder), "bench")
            fusion_s = time.perf_counter() - start
        assert result.counts["new_images"] + result.counts["already_stored"] == n, result.counts
        assert store.require_version("images", result.outputs["version"])["num_rows"] == result.counts["new_images"]

        start = time.perf_counter()
        ray.data.read_images(str(folder)).write_parquet(str(work / "ray-data"))
        ray_s = time.perf_counter() - start

        start = time.perf_counter()
        targz_settings = settings("fusion-targz")
        targz = ingest_source(targz_settings, Store.from_settings(targz_settings), str(archive), "bench")
        targz_s = time.perf_counter() - start
        assert targz.counts["images_ok"] == n, targz.counts

        layout_rows = layouts(datas[:5000], work)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    fusion, baseline, tgz = n / fusion_s, n / ray_s, n / targz_s
    results = {"images": n, "source_mb": round(mb, 1), "cores": args.cores,
               "fusion_img_s": round(fusion), "fusion_mb_s": round(mb / fusion_s, 1),
               "ray_data_img_s": round(baseline), "ray_data_mb_s": round(mb / ray_s, 1),
               "decode_limit_img_s": round(limit), "decode_loops_img_s": {k: round(v) for k, v in loops.items()},
               "fusion_targz_img_s": round(tgz), "fusion_targz_mb_s": round(mb / targz_s, 1),
               "peak_rss_mb": round(rss.peak / 2**20), "idle_rss_mb": round(idle.peak / 2**20),
               "speedup_vs_ray_data": round(fusion / baseline, 1),
               "fraction_of_decode_limit": round(fusion / limit, 3),
               "goal_10x_ray_data_met": fusion >= 10 * baseline, "goal_half_decode_limit_met": fusion >= 0.5 * limit,
               "layouts": [{k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
                           for row in layout_rows]}
    rows = [("Fusion ingest, folder -> committed Parquet", fusion, mb / fusion_s),
            ("Ray Data read_images -> write_parquet (baseline)", baseline, mb / ray_s),
            (f"decode limit (fastest loop, in memory) x {args.cores} cores", limit, None),
            ("Fusion ingest, straight from train.tar.gz", tgz, mb / targz_s)]
    print("\n| run | images/s | MB/s |\n|---|---:|---:|")
    for name, rate, mbs in rows:
        print(f"| {name} | {rate:,.0f} | {'' if mbs is None else f'{mbs:.1f}'} |")
    print(f"\npeak RSS (driver + Ray's processes) during Fusion's folder ingest: {results['peak_rss_mb']} MB "
          f"({results['idle_rss_mb']} MB with Ray idle)")
    print("decode loops (1 core): " + ", ".join(f"{k} {v:,.0f}/s" for k, v in loops.items()))
    print(f"speed-up over Ray Data: {fusion / baseline:.1f}x (goal 10x: "
          f"{'met' if results['goal_10x_ray_data_met'] else 'not met'}); "
          f"share of the decode limit: {fusion / limit:.0%} (goal 50%: "
          f"{'met' if results['goal_half_decode_limit_met'] else 'not met'})")
    print("\n| pixel layout (5,000 images, zstd) | write µs/image | bytes/image |\n|---|---:|---:|")
    for row in layout_rows:
        print(f"| {row['layout']} | {row['write_us_per_image']:.1f} | {row['bytes_per_image']:.0f} |")
    if args.out.resolve() == RESULTS / "ingest.json":
        write_results("ingest", results, context)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**context, **results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
