"""The driver's memory does not grow with the collection: inference, holdout evaluation and ingest's
deduplication each run on two sizes, and the growth of the driver's peak traced memory (tracemalloc) is
compared with what holding the larger collection would cost."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from fusion_core.config import load_settings
from fusion_core.store import Store
from fusion_core.store.datasets import array_to_pixels, pixels_schema, write_shard

pytestmark = [pytest.mark.ray, pytest.mark.tf]

CLASSES = ["a", "b"]
SHARD_ROWS = 1000


def _pixels(root: str, n: int) -> dict:
    """A pixels version of ``n`` random 32x32 RGB images, all in the test split, in shards of 1,000."""
    rng = np.random.default_rng(n)
    manifest = []
    for start in range(0, n, SHARD_ROWS):
        m = min(SHARD_ROWS, n - start)
        table = pa.table({"image_id": [f"{start + i:064x}" for i in range(m)],
                          "label": [CLASSES[i % 2] for i in range(m)], "split": ["test"] * m,
                          "pixels": array_to_pixels(rng.integers(0, 256, (m, 32, 32, 3), dtype=np.uint8)),
                          "imputed_fraction": pa.array([0.0] * m, pa.float32()),
                          "impute_method": pa.array([None] * m, pa.string())}, schema=pixels_schema(32, 32, 3))
        manifest.append(write_shard(root, f"datasets/pixels/s{start:07d}.parquet", table))
    store = Store(root)
    version = store.commit_version("pixels", manifest, "r0", info={"shape": [32, 32, 3], "scale": "unit"})
    return store.get_version("pixels", version)


def _traced_peak_mb(fn) -> float:
    """The peak of Python's traced allocations while ``fn`` ran."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()




@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An untrained seed CNN saved as a file (predictions' cost does not depend on the weights)."""
    from fusion_core.learning.model import build_model
    from fusion_core.learning.registry import save_model_file

    folder = tmp_path_factory.mktemp("model")
    return save_model_file(build_model("seed_cnn", (32, 32, 3), 2), str(folder))


def test_inference_holds_a_batch_not_the_collection(tmp_path, model, monkeypatch):
    from fusion_core.learning.registry import register_model
    from fusion_core.stages import infer
    from fusion_core.store import results

    monkeypatch.setattr(results, "CHUNK_ROWS", 500)  # SQL rows go in small chunks, so they do not mask growth

    def run(n: int) -> float:
        root = str(tmp_path / f"store-{n}")
        pixels = _pixels(root, n)
        store = Store(root)
        registered = register_model(store, model, CLASSES, run_id="m", name="seed_cnn", key="k",
                                    dataset_version=pixels["version"], metrics={}, config={})
        settings = load_settings("smoke", {"store.root": root, "infer.in_process_max": 10**9})
        return _traced_peak_mb(lambda: infer.infer_dataset(settings, store, pixels["version"], registered["version"], "r"))

    run(1000)  # TensorFlow warmed up outside the measured runs
    small, large = run(2000), run(12000)
    held_rows = 10000 * 1000 / 2**20  # a predictions row held per image costs about 1 kB in Python
    assert large - small < 0.3 * held_rows, (small, large)


def test_holdout_evaluation_reads_a_shard_at_a_time(tmp_path, model, monkeypatch):
    """Pixels live in Arrow's and TensorFlow's memory, which tracemalloc does not see: so this counts the
    rows the evaluation reads at once."""
    from fusion_core.learning import scoring
    from fusion_core.learning.registry import load_published

    keras_model = load_published(model)
    held, read_shard = [], scoring.read_shard

    def counting_read_shard(*args, **kwargs):
        table = read_shard(*args, **kwargs)
        held.append(table.num_rows)
        return table

    monkeypatch.setattr(scoring, "read_shard", counting_read_shard)
    root = str(tmp_path / "store")
    pixels = _pixels(root, 22000)
    metrics = scoring.evaluate_model(Store(root), keras_model, [s["path"] for s in pixels["shards"]], CLASSES,
                                     (32, 32, 3))
    assert metrics["n"] == 22000
    assert held == [SHARD_ROWS] * 22  # one shard's test rows at a time, each read once


def test_ingest_does_not_load_the_catalogs_known_images(tmp_path, demo_source, ray_local):
    from fusion_core.stages.ingest import ingest_source

    def run(known: int) -> float:
        root = str(tmp_path / f"store-{known}")
        store = Store(root)
        store.record_sources([{"image_id": f"{i:064x}", "source": f"/elsewhere/{i:08d}/image.png"}
                              for i in range(known)], "earlier")
        settings = load_settings("smoke", {"store.root": root})
        return _traced_peak_mb(lambda: ingest_source(settings, store, str(demo_source), "r"))

    run(10)
    small, large = run(1000), run(40000)
    held_ids = 39000 * 300 / 2**20  # an (id, path) pair held per known image costs about 300 bytes
    assert large - small < 0.2 * held_ids, (small, large)


def test_an_inference_that_died_before_its_commit_leaves_no_orphans(tmp_path, model, monkeypatch):
    """Found by the kill trials: shards named at random stayed behind when the driver died mid-stage."""
    from fusion_core.learning.registry import register_model
    from fusion_core.stages import infer
    from fusion_core.tools.fsck import check_store

    root = str(tmp_path / "store")
    pixels = _pixels(root, 2500)
    store = Store(root)
    for run_id in ("r0", "m", "died", "rerun"):  # the runs that made the pixels and model, and the two attempts
        store.start_run("infer", {}, run_id=run_id)
    registered = register_model(store, model, CLASSES, run_id="m", name="seed_cnn", key="k",
                                dataset_version=pixels["version"], metrics={}, config={})
    settings = load_settings("smoke", {"store.root": root, "infer.in_process_max": 10**9})

    def die(*_args):
        raise SystemExit("killed after writing its shards, before its commit")

    with monkeypatch.context() as patch:
        patch.setattr(Store, "replace_results", die)
        with pytest.raises(SystemExit):
            infer.infer_dataset(settings, store, pixels["version"], registered["version"], "died")
    store.finish_run("died", "failed")
    assert len(check_store(store).orphans) == 3
    done = infer.infer_dataset(settings, store, pixels["version"], registered["version"], "rerun")
    result = check_store(store)
    assert (result.errors, result.orphans) == ([], []) and done.counts["predictions"] == 2500
