"""fusion_core.uri on local paths and file:// URIs under tmp_path (and one fsspec-only memory:// file)."""

from __future__ import annotations

import fsspec
import pytest

from fusion_core import uri
from fusion_core.uri import FileTooLargeError


@pytest.fixture(params=["path", "file_uri"])
def base(request, tmp_path) -> str:
    """The test's folder as a local path or as a file:// URI."""
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_join():
    assert uri.join("/a/b/", "c", "/d/") == "/a/b/c/d"
    assert uri.join("s3://bucket/", "models", "v1/") == "s3://bucket/models/v1"
    assert uri.join("file:///tmp/x", "y") == "file:///tmp/x/y"
    assert uri.join("/a") == "/a"


def test_is_uri():
    assert uri.is_uri("file:///tmp/x") and uri.is_uri("s3://b/k")
    assert not uri.is_uri("/tmp/x") and not uri.is_uri("relative/x")


def test_kind_and_is_file(base, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "f.bin").write_bytes(b"x")
    assert uri.kind(uri.join(base, "folder")) == "dir"
    assert uri.kind(uri.join(base, "f.bin")) == "file"
    assert uri.kind(uri.join(base, "missing")) == "missing"
    assert uri.is_file(uri.join(base, "f.bin"))
    assert not uri.is_file(uri.join(base, "folder")) and not uri.is_file(uri.join(base, "missing"))


def test_write_bytes_creates_folders_and_read_bytes_reads_them(base, tmp_path):
    path = uri.join(base, "a", "b", "c.bin")
    uri.write_bytes(path, b"hello\x00world")
    assert (tmp_path / "a" / "b" / "c.bin").read_bytes() == b"hello\x00world"
    assert uri.read_bytes(path) == b"hello\x00world"
    uri.write_bytes(path, b"again")  # overwrites
    assert uri.read_bytes(path) == b"again"
    uri.write_bytes(uri.join(base, "empty.bin"), b"")
    assert uri.read_bytes(uri.join(base, "empty.bin")) == b""


@pytest.mark.parametrize("size", [2**16 - 1, 2**16, 2**16 + 1, 200_000])
def test_read_bytes_around_the_first_read(base, tmp_path, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    (tmp_path / "f.bin").write_bytes(data)
    assert uri.read_bytes(uri.join(base, "f.bin")) == data
    assert uri.read_bytes(uri.join(base, "f.bin"), max_bytes=size) == data  # the limit itself is allowed


def test_read_bytes_refuses_a_large_file(base, tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\1" * 70_000)  # more than the first 64 KiB read
    with pytest.raises(FileTooLargeError) as info:
        uri.read_bytes(uri.join(base, "big.bin"), max_bytes=65_536)
    assert info.value.size == 70_000 and "70000 bytes exceeds the limit of 65536 bytes" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_read_bytes_refuses_a_small_file_over_a_small_limit(base, tmp_path):
    (tmp_path / "small.bin").write_bytes(b"\1" * 100)  # within the first read of a local file
    with pytest.raises(FileTooLargeError) as info:
        uri.read_bytes(uri.join(base, "small.bin"), max_bytes=10)
    assert info.value.size == 100


def test_read_bytes_of_a_folder_or_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        uri.read_bytes(str(tmp_path))
    with pytest.raises(OSError):
        uri.read_bytes(str(tmp_path / "missing"))
    with pytest.raises(OSError):
        uri.read_bytes(f"file://{tmp_path}/missing")


def test_list_dir_and_walk_files(base, tmp_path):
    for rel in ("b.txt", "a/x.png", "a/deep/y.png", ".hidden.png", ".git/config", "a/.DS_Store", "z/.cache/k.bin"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    assert sorted(uri.list_dir(base)) == [".git", ".hidden.png", "a", "b.txt", "empty", "z"]
    assert sorted(uri.list_dir(uri.join(base, "a"))) == [".DS_Store", "deep", "x.png"]
    assert uri.walk_files(base) == ["a/deep/y.png", "a/x.png", "b.txt"]
    assert uri.walk_files(uri.join(base, "a")) == ["deep/y.png", "x.png"]
    assert uri.walk_files(uri.join(base, "empty")) == []


def test_upload_and_local_file(base, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"model bytes")
    dest = uri.join(base, "models", "run-1", "model.keras")
    uri.upload(str(src), dest)
    assert (tmp_path / "models" / "run-1" / "model.keras").read_bytes() == b"model bytes"
    work = tmp_path / "work"
    work.mkdir()
    local = uri.local_file(dest, str(work))
    assert local == str(tmp_path / "models" / "run-1" / "model.keras")  # local already: no copy
    assert list(work.iterdir()) == []


def test_local_file_copies_from_a_non_local_filesystem(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe("/fusion-test-uri/models/model.keras", b"remote bytes")
    try:
        local = uri.local_file("memory://fusion-test-uri/models/model.keras", str(tmp_path))
        assert local == str(tmp_path / "model.keras")
        assert (tmp_path / "model.keras").read_bytes() == b"remote bytes"
    finally:
        fs.rm("/fusion-test-uri", recursive=True)


def test_move_and_delete_file(base, tmp_path):
    uri.write_bytes(uri.join(base, "d", "part.tmp-1"), b"shard")
    uri.move(uri.join(base, "d", "part.tmp-1"), uri.join(base, "d", "part.parquet"))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["part.parquet"]
    assert uri.read_bytes(uri.join(base, "d", "part.parquet")) == b"shard"
    uri.write_bytes(uri.join(base, "d", "part.tmp-2"), b"newer")
    uri.move(uri.join(base, "d", "part.tmp-2"), uri.join(base, "d", "part.parquet"))  # replaces
    assert uri.read_bytes(uri.join(base, "d", "part.parquet")) == b"newer"
    uri.delete_file(uri.join(base, "d", "part.parquet"))
    assert uri.kind(uri.join(base, "d", "part.parquet")) == "missing"
    assert list((tmp_path / "d").iterdir()) == []
