"""The preprocess stage killed with SIGKILL mid-way, then rerun, ends with byte-identical shards."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fusion_core.config import load_settings
from fusion_core.imaging.corrupt import corrupt_random
from fusion_core.store import Store
from fusion_core.store.datasets import IMAGES_SCHEMA, write_shard
from fusion_core.tools.fsck import check_store

pytestmark = pytest.mark.ray

SHARDS, PER_SHARD, SIZE = 4, 400, 32
REPO = Path(__file__).resolve().parent.parent

CHILD = """
import sys
from fusion_core.config import load_settings
from fusion_core.stages.preprocess import preprocess_dataset
from fusion_core.store import Store
settings = load_settings(None, {"store.root": sys.argv[1], "ray.num_cpus": 1, "ray.node_ip_address": "127.0.0.2",
                                "preprocess.impute_method": "biharmonic"})
preprocess_dataset(settings, Store.from_settings(settings), 1, "killed-run")
"""


def _images_store(root: str) -> None:
    """An ``images`` dataset of SHARDS shards of smooth 32x32 RGB images, half of their pixels missing."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    shards = []
    for s in range(SHARDS):
        phase = rng.random((PER_SHARD, 1, 1, 3)) * 6
        pixels = (127 + 120 * np.sin(xx[None, ..., None] / 5 + phase) * np.cos(yy[None, ..., None] / 7)).astype(np.uint8)
        mask = corrupt_random((PER_SHARD, SIZE, SIZE), 0.5, seed=s)
        ids = [hashlib.sha256(f"{s}-{i}".encode()).hexdigest() for i in range(PER_SHARD)]
        table = pa.table({
            "image_id": ids, "source": [f"/src/{i}.png" for i in ids], "label": ["a", "b"] * (PER_SHARD // 2),
            "split": (["train"] * 3 + ["val", "test"]) * (PER_SHARD // 5),
            "height": pa.array([SIZE] * PER_SHARD, pa.int32()), "width": pa.array([SIZE] * PER_SHARD, pa.int32()),
            "channels": pa.array([3] * PER_SHARD, pa.int8()), "pixels": [p.tobytes() for p in pixels],
            "mask": [np.packbits(m).tobytes() for m in mask],
        }, schema=IMAGES_SCHEMA)
        shards.append(write_shard(root, f"datasets/images/part-{s:03d}.parquet", table))
    Store(root).commit_version("images", shards, None)


def _pixel_files(root: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(root, "datasets", "pixels").glob("*.parquet"))}


def _run(root: str) -> dict:
    from fusion_core.stages.preprocess import preprocess_dataset

    settings = load_settings(None, {"store.root": root, "preprocess.impute_method": "biharmonic"})
    store = Store.from_settings(settings)
    return preprocess_dataset(settings, store, 1, store.start_run("preprocess", {})).counts


def test_rerun_after_kill_9_is_byte_identical(tmp_path, ray_local):
    crashed, clean = str(tmp_path / "crashed"), str(tmp_path / "clean")
    _images_store(crashed)
    _images_store(clean)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, crashed], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not _pixel_files(crashed) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the child and the local Ray it started
        child.wait()
    done_before = _pixel_files(crashed)
    assert 1 <= len(done_before) < SHARDS, "the kill must land between the first and the last shard"
    assert Store(crashed).latest_version("pixels") is None  # nothing committed

    rerun = _run(crashed)
    assert rerun["new_shards"] == SHARDS - len(done_before)
    reference = _run(clean)
    assert reference["new_shards"] == SHARDS
    after, expected = _pixel_files(crashed), _pixel_files(clean)
    assert list(after) == list(expected) and len(expected) == SHARDS
    assert after == expected
    assert Store(crashed).latest_version("pixels")["info"] == Store(clean).latest_version("pixels")["info"]
    assert check_store(Store(crashed)).findings == []
