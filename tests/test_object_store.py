"""The store on an S3-compatible server: a real ``moto_server`` on loopback, reached through ``fusion_core.uri``
with the endpoint and credentials from the standard ``AWS_*`` environment. The nightly flow end to end on it
runs in test_ray_cluster, on a two-node cluster."""

from __future__ import annotations

from pathlib import Path

from conftest import S3_BUCKET as BUCKET

from fusion_core import uri


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


