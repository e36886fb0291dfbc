"""The store on an S3-compatible server: a real ``moto_server`` on loopback, reached through ``fusion_core.uri``
with the endpoint and credentials from the standard ``AWS_*`` environment, and the nightly flow end to end on it."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest
from conftest import S3_BUCKET as BUCKET

from fusion_core import uri
from fusion_core.config import load_settings


def _objects(prefix: str) -> list[str]:
    """Keys under ``prefix`` in the bucket, listed with boto3 (not through Fusion's own code)."""
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])]


def test_uri_reads_writes_lists_moves_and_deletes_objects(s3_endpoint, tmp_path):
    base = f"s3://{BUCKET}/uri-test"
    uri.write_bytes(uri.join(base, "d", "a.bin"), b"alpha")
    uri.upload(str(_local(tmp_path, "b.bin", b"beta")), uri.join(base, "d", "sub", "b.bin"))
    assert uri.read_bytes(uri.join(base, "d", "a.bin")) == b"alpha"
    with uri.open_input(uri.join(base, "d", "sub", "b.bin")) as fh:
        assert fh.read() == b"beta"
    assert uri.kind(uri.join(base, "d")) == "dir" and uri.is_file(uri.join(base, "d", "a.bin"))
    assert uri.kind(uri.join(base, "nothing")) == "missing"
    assert sorted(uri.list_dir(uri.join(base, "d"))) == ["a.bin", "sub"]
    assert uri.walk_files(base) == ["d/a.bin", "d/sub/b.bin"]

    uri.move(uri.join(base, "d", "a.bin"), uri.join(base, "d", "c.bin"))  # a file
    uri.link_or_copy(uri.join(base, "d", "c.bin"), uri.join(base, "copy", "c.bin"))  # server-side copy
    uri.move(uri.join(base, "d"), uri.join(base, "e"))  # a folder: file by file on an object store
    assert uri.walk_files(base) == ["copy/c.bin", "e/c.bin", "e/sub/b.bin"]
    assert uri.kind(uri.join(base, "d")) == "missing"
    local = uri.local_file(uri.join(base, "e", "c.bin"), str(tmp_path))
    assert local == str(tmp_path / "c.bin") and Path(local).read_bytes() == b"alpha"

    uri.delete_file(uri.join(base, "copy", "c.bin"))
    uri.delete_dir(uri.join(base, "e"))
    assert uri.walk_files(base) == []
    assert [k for k in _objects("uri-test/") if k and not k.endswith("/")] == []  # folder markers at most


def _local(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder / name


@pytest.fixture(scope="module")
def ray_with_store_env(s3_endpoint):
    """A local Ray started after ``AWS_*`` are set, so its workers reach the same server with the same keys."""
    import ray

    from fusion_core.ray_runtime import ensure_ray

    if ray.is_initialized():  # started before the environment was set: its workers would not see it
        ray.shutdown()
    yield ensure_ray(load_settings("smoke"))
    ray.shutdown()  # the next test that needs Ray starts one without these keys (conftest's ray_local)


@pytest.mark.ray
@pytest.mark.tf
@pytest.mark.prefect
def test_nightly_flow_with_the_store_on_an_object_store(s3_endpoint, ray_with_store_env, prefect_harness,
                                                        demo_source, postgres_url, tmp_path, monkeypatch):
    from flows.nightly import nightly_flow
    from fusion_core.store import Store

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    ray_results = sorted((Path.home() / "ray_results").glob("*"))
    root = f"s3://{BUCKET}/fusion"
    overrides = {"store.root": root, "store.db": postgres_url, "infer.in_process_max": 0}  # infer on Ray Data too

    first = nightly_flow(str(demo_source), "smoke", overrides)
    assert first["ingest"]["counts"]["new_images"] == 120
    assert first["train"]["counts"]["trained"] == 1
    second = nightly_flow(str(demo_source), "smoke", overrides)
    assert second["ingest"]["counts"]["new_images"] == 0
    assert second["train"]["counts"]["trained"] == 0
    assert second["infer"]["counts"]["reused"] == 1

    store = Store(root, postgres_url)
    assert [store.get_run(r["run_id"])["status"] for r in (first, second)] == ["completed", "completed"]
    model = store.get_model(first["train"]["outputs"]["model_version"])
    assert model["path"] == f"{root}/models/{first['run_id']}/model.keras"
    objects = set(_objects("fusion/"))
    for run in (first, second):
        assert f"reports/{run['run_id']}/index.html" in objects
        assert run["report"]["outputs"]["report"] == f"{root}/reports/{run['run_id']}/index.html"
    assert {f"models/{first['run_id']}/model.keras", f"models/{first['run_id']}/classes.json"} <= objects
    for dataset in ("images", "pixels", "predictions", "clusters"):
        shards = {s["path"] for s in store.latest_version(dataset)["shards"]}
        assert shards and all(p.startswith(f"datasets/{dataset}/") for p in shards) and shards <= objects
    checkpoints = [k for k in objects if k.startswith("checkpoints/train-")]
    assert any(k.endswith("/model.keras") for k in checkpoints) and any(k.endswith("/state.json") for k in checkpoints)
    fs, current = uri.filesystem(uri.join(root, "datasets", "predictions", "current"))
    assert pads.dataset(current, filesystem=fs, format="parquet").count_rows() == 120
    assert b"nightly flow, completed" in uri.read_bytes(second["report"]["outputs"]["report"])

    assert list(workdir.iterdir()) == []  # nothing in the working folder: no ./fusion-store, no catalog.db
    assert sorted((Path.home() / "ray_results").glob("*")) == ray_results  # checkpoints went to the bucket only
