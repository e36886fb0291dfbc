"""Every flow on real Prefect (test harness), real Ray and real TensorFlow, smoke profile.

The stage tests run in file order on one store, each stage reading what the one before wrote.
"""

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flows.cluster import cluster_flow
from flows.infer import infer_flow
from flows.ingest import ingest_flow
from flows.nightly import nightly_flow
from flows.preprocess import preprocess_flow
from flows.train import train_flow
from fusion_core.store import Store

pytestmark = [pytest.mark.ray, pytest.mark.tf, pytest.mark.prefect]

IMAGES = 120  # demo_source: 10 classes x 12, plus 5 corrupt files


@pytest.fixture(scope="module")
def stage_store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("stages") / "store")


@pytest.fixture(autouse=True)
def _runtime(prefect_harness, ray_local):
    yield


def _overrides(root):
    return {"store.root": root}


def test_ingest_flow(demo_source, stage_store):
    result = ingest_flow(str(demo_source), "smoke", _overrides(stage_store))
    assert result["counts"]["new_images"] == IMAGES
    assert result["counts"]["quarantined"] == 5
    assert set(result["counts"]["quarantine_reasons"]) == {"empty_file", "not_an_image"}
    store = Store(stage_store)
    assert store.get_run(result["run_id"])["status"] == "completed"
    assert len(store.quarantine_rows()) == 5
    version = store.latest_version("images")
    assert version["num_rows"] == IMAGES and len(version["shards"]) == 2  # files_per_task=100


def test_ingest_flow_adds_only_new_files(demo_source, tmp_path):
    root = str(tmp_path / "store")
    ingest_flow(str(demo_source), "smoke", _overrides(root))
    source = tmp_path / "src"
    shutil.copytree(demo_source, source)
    shutil.copy(sorted(source.glob("circle/*.png"))[0], source / "circle" / "same-content-other-name.png")
    pixels = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(source / "square" / "brand-new.png")

    result = ingest_flow(str(source), "smoke", _overrides(root))
    assert result["counts"]["new_images"] == 1
    assert result["counts"]["already_stored"] == IMAGES + 1
    assert result["counts"]["quarantined"] == 5  # the copies of the corrupt files, at their new paths
    store = Store(root)
    latest = store.latest_version("images")
    assert latest["version"] == 2 and latest["num_rows"] == IMAGES + 1 and len(latest["shards"]) == 3
    assert any(s.endswith("same-content-other-name.png") for _, s in store.known_sources())
    rerun = ingest_flow(str(source), "smoke", _overrides(root))
    assert rerun["counts"]["new_images"] == 0 and rerun["counts"]["new_quarantine_rows"] == 0


def test_preprocess_flow(stage_store):
    result = preprocess_flow("smoke", _overrides(stage_store))
    assert result["counts"]["images"] == IMAGES and result["counts"]["new_shards"] == 2
    assert result["counts"]["imputed_images"] == 10  # one RGBA image with a hole per class
    store = Store(stage_store)
    pixels = store.latest_version("pixels")
    table = pq.read_table(store.path(pixels["shards"][0]["path"]))
    assert table.schema.field("pixels").type.byte_width == 32 * 32 * 3
    again = preprocess_flow("smoke", _overrides(stage_store))
    assert again["counts"]["new_shards"] == 0 and again["outputs"]["version"] == pixels["version"]


def test_train_flow(stage_store):
    result = train_flow("smoke", _overrides(stage_store))
    assert result["counts"]["trained"] == 1
    assert result["outputs"]["stage"] == "champion" and result["outputs"]["model_version"] == 1
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    model = Store(stage_store).get_model(1)
    assert len(model["metrics"]["confusion_matrix"]) == 10
    assert model["metrics"]["n"] == result["counts"]["holdout_images"] > 0
    assert model["path"].endswith("model.keras")


def test_infer_flow(stage_store):
    result = infer_flow("smoke", _overrides(stage_store))
    assert result["counts"]["predictions"] == IMAGES
    store = Store(stage_store)
    rows = store.query("predictions", result["run_id"])
    assert len(rows) == IMAGES and all(0.0 <= r["confidence"] <= 1.0 for r in rows)
    assert all(len(r["top_k"]) == 3 and r["top_k"][0] == r["predicted"] for r in rows)
    table = pq.read_table(store.path(result["outputs"]["shards"][0]))
    assert table.schema.field("embedding").type.list_size == 512
    assert infer_flow("smoke", _overrides(stage_store))["counts"]["reused"] == 1


def test_cluster_flow(stage_store):
    result = cluster_flow("smoke", _overrides(stage_store))
    assert result["counts"]["clusters"] == 10
    assert {"silhouette", "nmi", "ari"} <= set(result["metrics"])
    store = Store(stage_store)
    assert len(store.query("cluster_assignments", result["run_id"])) == IMAGES
    summaries = store.query("cluster_summaries", result["run_id"])
    assert sum(s["size"] for s in summaries) == IMAGES


def test_nightly_end_to_end_then_rerun_adds_nothing(demo_source, tmp_path):
    overrides = _overrides(str(tmp_path / "store"))
    first = nightly_flow(str(demo_source), "smoke", overrides)
    assert first["ingest"]["counts"]["new_images"] == IMAGES
    assert first["train"]["counts"]["trained"] == 1
    store = Store(str(tmp_path / "store"))
    run = store.get_run(first["run_id"])
    assert run["status"] == "completed"
    assert [s["stage"] for s in run["stages"]] == ["ingest", "preprocess", "train", "infer", "cluster"]

    second = nightly_flow(str(demo_source), "smoke", overrides)
    assert second["ingest"]["counts"]["new_images"] == 0
    assert second["train"]["counts"]["trained"] == 0
    assert second["infer"]["counts"]["reused"] == 1
    assert store.get_run(second["run_id"])["status"] == "completed"
    assert store.latest_version("images")["version"] == 1


def test_grayscale_changes_the_model_input(demo_source, tmp_path):
    overrides = {**_overrides(str(tmp_path / "store")), "preprocess.grayscale": True, "train.epochs": 1}
    result = nightly_flow(str(demo_source), "smoke", overrides)
    assert result["preprocess"]["outputs"]["shape"] == [32, 32, 1]
    from fusion_core.model import load_model

    model = load_model(result["train"]["outputs"]["model_path"])
    assert model.input_shape == (None, 32, 32, 1)
    assert result["infer"]["counts"]["predictions"] == IMAGES
