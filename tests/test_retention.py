"""The current result of a dataset (read without the catalog) and `fusion gc --keep N`, on a hand-built
store of three runs (no Ray, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from fusion_core.data.publish import current_folder, publish_current, published_version
from fusion_core.data.runs import StageResult, record_stage
from fusion_core.store import Store
from fusion_core.store.datasets import array_to_fixed_list, predictions_schema, write_shard
from fusion_core.tools.retention import collect_garbage

IMAGES = 40


def _shard(root: str, dataset: str, name: str, run: int) -> dict:
    """A small shard: predictions-shaped for ``predictions``, a one-column table otherwise."""
    ids = [f"{i:064x}" for i in range(IMAGES)]
    if dataset != "predictions":
        return write_shard(root, f"datasets/{dataset}/{name}.parquet", pa.table({"image_id": ids}))
    probs = np.full((IMAGES, 2), 0.5, np.float32)
    table = pa.table({"image_id": ids, "label": ["a"] * IMAGES, "split": ["test"] * IMAGES,
                      "predicted": ["a"] * IMAGES, "confidence": pa.array([0.5 + run / 10] * IMAGES, pa.float32()),
                      "top_k": [["a"]] * IMAGES, "probs": array_to_fixed_list(probs),
                      "embedding": array_to_fixed_list(np.zeros((IMAGES, 4), np.float32))},
                     schema=predictions_schema(2, 4))
    return write_shard(root, f"datasets/predictions/{name}.parquet", table)


def _nightly(store: Store, run: int) -> str:
    """A run that commits one version of each dataset (each derived from the one before) and its results."""
    run_id = store.start_run("nightly", {}, run_id=f"run-{run}")
    images_manifest = [_shard(store.root, "images", f"i{k}", run) for k in range(1, run + 1)]  # images grow
    made = {"images": store.commit_version("images", images_manifest, run_id)}
    for dataset, source, field in (("pixels", "images", "images_version"),
                                   ("predictions", "pixels", "pixels_version"),
                                   ("clusters", "predictions", "predictions_version")):
        made[dataset] = store.commit_version(dataset, [_shard(store.root, dataset, f"{dataset[0]}{run}", run)],
                                             run_id, info={field: made[source]})
    for stage, dataset in (("ingest", "images"), ("preprocess", "pixels"), ("infer", "predictions"),
                           ("cluster", "clusters")):
        record_stage(store, run_id, stage, lambda d=dataset: StageResult(
            "x", outputs={"version": made[d], "table_run_id": run_id}))
    store.replace_results("predictions", run_id, [
        {"image_id": f"{i:064x}", "model_version": 1, "predicted": "a", "confidence": 0.5} for i in range(IMAGES)])
    publish_current(store, store.get_version("predictions", made["predictions"]))
    Path(store.root, "reports", run_id).mkdir(parents=True)
    Path(store.root, "checkpoints", f"train-{run_id}").mkdir(parents=True)
    store.finish_run(run_id, "completed")
    return run_id


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "store"))
    for run in (1, 2, 3):
        _nightly(store, run)
    return store


def test_the_current_predictions_are_read_without_the_catalog_each_image_once(store):
    table = pads.dataset(current_folder(store, "predictions"), format="parquet").to_table()
    assert table.num_rows == IMAGES and len(set(table.column("image_id").to_pylist())) == IMAGES
    assert table.column("confidence").to_pylist() == pytest.approx([0.8] * IMAGES)  # run 3's, the newest
    assert published_version(store, "predictions") == 3
    publish_current(store, store.get_version("predictions", 1))  # a later run may use an older version
    table = pads.dataset(current_folder(store, "predictions"), format="parquet").to_table()
    assert table.column("confidence").to_pylist() == pytest.approx([0.6] * IMAGES)
    assert not any(p.name.startswith("_current") for p in Path(store.root, "datasets", "predictions").iterdir())


def test_gc_keeps_the_newest_runs_the_champion_and_what_they_derive_from(store):
    model = store.register_model("run-1", "seed_cnn", "/models/m.keras", "k", dataset_version=1, metrics={},
                                 config={})
    store.set_champion(model, reason="test")
    planned = collect_garbage(store, keep=1, dry_run=True)
    assert store.get_version("predictions", 1) is not None  # a dry run removes nothing
    removed = collect_garbage(store, keep=1)
    assert removed == planned | {"result_rows": 2 * IMAGES}
    assert [v["version"] for v in store.list_versions("pixels")] == [1, 3]  # the champion's data, and run 3's
    assert [v["version"] for v in store.list_versions("images")] == [1, 3]  # what those were made from
    assert [v["version"] for v in store.list_versions("predictions")] == [3]
    assert [v["version"] for v in store.list_versions("clusters")] == [3]
    root = Path(store.root)
    assert not (root / "datasets/predictions/p1.parquet").exists() and (root / "datasets/predictions/p3.parquet").exists()
    assert (root / "datasets/pixels/p1.parquet").exists() and not (root / "datasets/pixels/p2.parquet").exists()
    assert all((root / f"datasets/images/i{k}.parquet").exists() for k in (1, 2, 3))  # listed by images v3
    assert sorted(p.name for p in (root / "reports").iterdir()) == ["run-3"]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["train-run-3"]
    assert len(store.query("predictions", "run-3")) == IMAGES and store.query("predictions", "run-1") == []
    assert pads.dataset(current_folder(store, "predictions"), format="parquet").count_rows() == IMAGES
    assert collect_garbage(store, keep=1)["predictions_versions"] == 0  # nothing more to remove


def test_gc_refuses_to_keep_nothing(store):
    with pytest.raises(ValueError, match="--keep must be at least 1"):
        collect_garbage(store, keep=0)


def test_fusion_gc_command(store):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["gc", "--keep", "2", "--dry-run", "--store", store.root])
    assert result.exit_code == 0, result.output
    assert "would remove: images_versions=1, images_shards=0, pixels_versions=1, pixels_shards=1" in result.output
    assert "(kept the 2 newest runs and what they need)" in result.output
    assert store.get_version("pixels", 1) is not None
    assert CliRunner().invoke(app, ["gc", "--keep", "0", "--store", store.root]).exit_code == 2
