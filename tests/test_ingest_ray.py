"""ingest_source end to end on one local Ray: every source kind, bad inputs, incremental runs, kill -9."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fusion_core.config import load_settings
from fusion_core.stages.ingest import ingest_source, split_for
from fusion_core.store import Store
from fusion_core.store.datasets import read_shards, unpack_mask
from fusion_core.tools.fsck import check_store

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _ray(ray_local):
    yield


def _settings(root, **overrides):
    return load_settings("smoke", {"store.root": str(root), **overrides})


def _ingest(settings, source: str, run_id: str):
    store = Store.from_settings(settings)
    if store.get_run(run_id) is None:  # a run the catalog records, as a flow's would be
        store.start_run("ingest", {}, run_id=run_id)
    result = ingest_source(settings, store, source, run_id)
    store.finish_run(run_id, "completed")
    return result


def _image(png, seed, size=8) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _rows(root) -> list[tuple]:
    store = Store(str(root))
    version = store.latest_version("images")
    table = read_shards(store.root, [s["path"] for s in version["shards"]])
    cols = ["image_id", "label", "split", "height", "width", "channels", "pixels", "mask"]
    return sorted(zip(*(table.column(c).to_pylist() for c in cols)))


def _good_and_bad(src: Path, png) -> None:
    rgba = np.random.default_rng(3).integers(0, 256, (6, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[2:4, 1:3, 3] = 0
    truncated = png(np.random.default_rng(4).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _write(src, {**{f"cat/{i}.png": _image(png, i) for i in range(4)},
                 **{f"dog/{i}.png": _image(png, 10 + i) for i in range(3)},
                 "dog/zz-copy-of-cat-0.png": _image(png, 0), "cat/hole.png": png(rgba, "RGBA"),
                 "cat/partial.png": truncated[: len(truncated) * 2 // 3],
                 "bad/empty.png": b"", "bad/text.jpg": b"hello", "bad/head.png": truncated[:30],
                 "bad/bomb.png": png(np.zeros((100, 100), np.uint8), "L")})
    (src / "bad" / "loop").symlink_to(src)


def test_folder_bad_inputs_duplicates_and_incremental_runs(tmp_path, png):
    src, root = tmp_path / "src", tmp_path / "store"
    _good_and_bad(src, png)
    settings = _settings(root, **{"ingest.files_per_task": 3, "ingest.max_pixels": 5000})
    first = _ingest(settings, str(src), "run-1")
    c = first.counts
    assert (c["new_images"], c["already_stored"], c["quarantined"]) == (9, 1, 5)
    assert c["quarantine_reasons"] == {"empty_file": 1, "not_an_image": 1, "symlink_loop": 1, "too_many_pixels": 1,
                                       "truncated": 1}
    store = Store(str(root))
    assert sorted((Path(q["source"]).name, q["error_class"], q["run_id"]) for q in store.quarantine_rows()) == [
        ("bomb.png", "too_many_pixels", "run-1"), ("empty.png", "empty_file", "run-1"),
        ("head.png", "truncated", "run-1"), ("loop", "symlink_loop", "run-1"), ("text.jpg", "not_an_image", "run-1")]
    rows = _rows(root)
    assert len(rows) == len({r[0] for r in rows}) == 9
    assert all(split == split_for(i, 0.15, 0.2) for i, _, split, *_ in rows)
    copies = {s for i, s in store.known_sources() if s.endswith(("cat/0.png", "zz-copy-of-cat-0.png"))}
    assert len(copies) == 2  # one row, both paths
    masks = {(r[3], r[4]): unpack_mask(r[7], r[3], r[4]) for r in rows if r[7] is not None}
    assert set(masks) == {(6, 6), (40, 40)}
    assert masks[6, 6].sum() == 4  # alpha == 0
    assert 0 < masks[40, 40].sum() < 1600 and masks[40, 40][-1].all()  # the lost end of the truncated PNG

    again = _ingest(settings, str(src), "run-2")
    assert again.counts["new_images"] == 0 and again.counts["new_quarantine_rows"] == 0
    assert store.latest_version("images")["version"] == 1

    _write(src, {"bird/new-1.png": _image(png, 100), "bird/new-2.png": _image(png, 101),
                 "bird/dup.png": _image(png, 1)})
    third = _ingest(settings, str(src), "run-3")
    assert third.counts["new_images"] == 2 and third.counts["already_stored"] == 11
    latest = store.latest_version("images")
    assert latest["version"] == 2 and latest["num_rows"] == 11
    new = third.outputs["new_shards"]
    assert [s["path"] for s in latest["shards"]] == sorted(first.outputs["new_shards"] + new)
    assert set(new).isdisjoint(first.outputs["new_shards"])
    added = read_shards(store.root, new)
    assert added.num_rows == 2 and set(added.column("label").to_pylist()) == {"bird"}


def test_archive_cifar_and_manifest_sources(tmp_path, png):
    src = tmp_path / "train"
    _write(src, {f"cat/{i}.png": _image(png, i) for i in range(3)} | {f"dog/{i}.png": _image(png, 10 + i)
                                                                      for i in range(3)})
    archive = tmp_path / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="train")
    from_folder = _ingest(_settings(tmp_path / "s1"), str(src), "r")
    from_archive = _ingest(_settings(tmp_path / "s2"), str(archive), "r")
    assert from_folder.counts["new_images"] == from_archive.counts["new_images"] == 6
    assert _rows(tmp_path / "s1") == _rows(tmp_path / "s2")  # same ids, labels, pixels
    sources = {s for _, s in Store(str(tmp_path / "s2")).known_sources()}
    assert f"{archive}!/train/cat/0.png" in sources

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    (cifar / "batches.meta.txt").write_text("plane\ncar\n")
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    records = np.concatenate([np.array([[0], [1], [1], [0]], np.uint8),
                              images.transpose(0, 3, 1, 2).reshape(4, -1)], axis=1)
    (cifar / "data_batch_1.bin").write_bytes(records.tobytes())
    result = _ingest(_settings(tmp_path / "s3"), f"file://{cifar}", "r")
    assert result.counts["new_images"] == 4
    rows = _rows(tmp_path / "s3")
    assert sorted(r[1] for r in rows) == ["car", "car", "plane", "plane"]
    assert all(split == split_for(i, 0.15, 0.2, "train") for i, _, split, *_ in rows)  # data_batch_*: train
    stored = sorted(r[6] for r in rows)
    assert stored == sorted(img.tobytes() for img in images)

    (tmp_path / "m.csv").write_text("path,label\ntrain/cat/0.png,feline\ntrain/dog/0.png,\n")
    result = _ingest(_settings(tmp_path / "s4"), str(tmp_path / "m.csv"), "r")
    assert result.counts["new_images"] == 2
    assert sorted(r[1] or "" for r in _rows(tmp_path / "s4")) == ["", "feline"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from fusion_core.config import load_settings
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.store import Store

    root, source, address, mode = sys.argv[1:5]
    if mode == "before_commit":
        Store.commit_version = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    settings = load_settings("smoke", {"store.root": root, "ray.address": address, "ingest.files_per_task": 4})
    store = Store.from_settings(settings)
    ingest_source(settings, store, source, store.start_run("ingest", {}, run_id="killed"))
""")


def test_kill_minus_9_then_rerun_gives_the_rows_of_a_clean_run(tmp_path, ray_local, png):
    src = tmp_path / "src"
    _write(src, {f"c{i % 3}/{i}.png": _image(png, i, size=32) for i in range(40)})
    _write(src, {"c0/copy.png": _image(png, 5, size=32), "c1/bad.png": b"junk"})
    _ingest(_settings(tmp_path / "clean", **{"ingest.files_per_task": 4}), str(src), "clean")
    clean = _rows(tmp_path / "clean")
    address = ray_local.get_runtime_context().gcs_address
    for mode in ("before_commit", "timed"):
        root = tmp_path / mode
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root), str(src), address, mode],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if mode == "timed":  # kill -9 as soon as the first shards exist
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if any((root / "datasets" / "images").glob("*.parquet")) if (root / "datasets").exists() else False:
                    break
                time.sleep(0.01)
            proc.kill()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -9, err.decode()[-2000:]
        store = Store(str(root))
        visible = store.latest_version("images")  # all or nothing
        assert visible is None if mode == "before_commit" else visible is None or _rows(root) == clean
        rerun = _ingest(_settings(root, **{"ingest.files_per_task": 4}), str(src), "rerun")
        assert rerun.counts["new_images"] == (len(clean) if visible is None else 0)
        assert _rows(root) == clean
        assert len(store.quarantine_rows()) == 1
        for shard in store.latest_version("images")["shards"]:
            pq.read_metadata(root / shard["path"])  # every listed shard is whole
        assert check_store(store).errors == []
        assert check_store(store, repair=True).errors == [] and check_store(store).findings == []
        assert _rows(root) == clean
