"""Tests for fusion_core.store.datasets: shard writes/reads, schemas and pixel/embedding packing."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from fusion_core.store.datasets import (IMAGES_SCHEMA, SCHEMA_VERSION, array_to_fixed_list, array_to_pixels,
                                        fixed_list_to_array, pack_mask, pixels_schema, pixels_to_array,
                                        predictions_schema, read_shards, shape_of, shard_checksum, shard_files,
                                        unpack_mask, write_shard)


def _table(start: int, n: int) -> pa.Table:
    return pa.table({"i": pa.array(range(start, start + n), pa.int64()),
                     "s": pa.array([f"row{k}" for k in range(start, start + n)])})


def _images_table(n: int = 2) -> pa.Table:
    rows = {
        "image_id": [f"{k:064x}" for k in range(n)],
        "source": [f"/src/{k}.png" for k in range(n)],
        "label": ["cat"] * n,
        "split": ["train"] * n,
        "height": [2] * n,
        "width": [2] * n,
        "channels": [1] * n,
        "pixels": [bytes([k, k, k, k]) for k in range(n)],
        "mask": [None] * n,
    }
    return pa.table(rows, schema=IMAGES_SCHEMA)


def test_write_shard_zstd_atomic_and_manifest(tmp_path):
    table = _table(0, 5)
    entry = write_shard(str(tmp_path), "datasets/x/part-0.parquet", table)
    written = tmp_path / "datasets" / "x" / "part-0.parquet"
    assert entry == {"path": "datasets/x/part-0.parquet", "num_rows": 5,
                     "checksum": hashlib.sha256(written.read_bytes()).hexdigest()}
    assert shard_checksum(str(tmp_path), entry["path"]) == entry["checksum"]
    assert written.is_file()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["part-0.parquet"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    meta = pq.ParquetFile(written).metadata
    assert meta.num_rows == 5
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_table(written).equals(table)


def test_write_shard_overwrites_same_path(tmp_path):
    write_shard(str(tmp_path), "a/s.parquet", _table(0, 3))
    entry = write_shard(str(tmp_path), "a/s.parquet", _table(10, 2))
    assert entry["num_rows"] == 2
    assert pq.read_table(tmp_path / "a" / "s.parquet").column("i").to_pylist() == [10, 11]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["s.parquet"]


def test_read_shards_concatenates_in_order(tmp_path):
    root = str(tmp_path)
    write_shard(root, "d/1.parquet", _table(0, 3))
    write_shard(root, "d/2.parquet", _table(3, 2))
    both = read_shards(root, ["d/2.parquet", "d/1.parquet"])
    assert both.column("i").to_pylist() == [3, 4, 0, 1, 2]
    only_s = read_shards(root, ["d/1.parquet", "d/2.parquet"], columns=["s"])
    assert only_s.column_names == ["s"]
    assert only_s.column("s").to_pylist() == [f"row{k}" for k in range(5)]
    assert read_shards(root, []).num_rows == 0


def test_shard_files():
    fs, paths = shard_files("/store/", ["a.parquet", "d/b.parquet"])
    assert isinstance(fs, pafs.LocalFileSystem) and paths == ["/store/a.parquet", "/store/d/b.parquet"]


def test_images_schema_metadata_survives_write(tmp_path):
    write_shard(str(tmp_path), "images.parquet", _images_table())
    schema = pq.read_schema(tmp_path / "images.parquet")
    assert schema.metadata[b"fusion.schema_version"] == SCHEMA_VERSION.encode()
    assert schema.metadata[b"fusion.dataset"] == b"images"
    back = read_shards(str(tmp_path), ["images.parquet"])
    assert back.schema.metadata[b"fusion.schema_version"] == b"1"
    assert back.column("pixels").to_pylist() == [b"\x00\x00\x00\x00", b"\x01\x01\x01\x01"]
    assert back.schema.field("image_id").nullable is False


def test_pixels_schema_shape_round_trip(tmp_path):
    schema = pixels_schema(6, 5, 3)
    assert shape_of(schema) == (6, 5, 3)
    assert schema.field("pixels").type == pa.binary(6 * 5 * 3)
    images = np.zeros((2, 6, 5, 3), dtype=np.uint8)
    table = pa.table({"image_id": ["a", "b"], "label": ["x", None], "split": ["train", "val"],
                      "pixels": array_to_pixels(images),
                      "imputed_fraction": pa.array([0.0, 0.5], pa.float32()),
                      "impute_method": pa.array([None, "mean"], pa.string())}, schema=schema)
    write_shard(str(tmp_path), "p.parquet", table)
    read_back = read_shards(str(tmp_path), ["p.parquet"])
    assert shape_of(read_back.schema) == (6, 5, 3)
    assert read_back.schema.metadata[b"fusion.schema_version"] == b"1"
    assert read_back.schema.metadata[b"fusion.dataset"] == b"pixels"


def test_predictions_schema_types():
    schema = predictions_schema(4, 16)
    assert schema.field("probs").type == pa.list_(pa.float32(), 4)
    assert schema.field("embedding").type == pa.list_(pa.float32(), 16)
    assert schema.metadata[b"fusion.dataset"] == b"predictions"


@pytest.fixture
def images():
    return np.random.default_rng(7).integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)


def test_pixels_round_trip(images):
    column = array_to_pixels(images)
    assert column.type == pa.binary(4 * 4 * 3)
    assert len(column) == 5
    assert column[1].as_py() == images[1].tobytes()
    back = pixels_to_array(column, (4, 4, 3))
    assert back.dtype == np.uint8
    assert back.shape == (5, 4, 4, 3)
    np.testing.assert_array_equal(back, images)


def test_pixels_round_trip_sliced(images):
    column = array_to_pixels(images).slice(2, 2)
    assert column.offset == 2
    np.testing.assert_array_equal(pixels_to_array(column, (4, 4, 3)), images[2:4])
    np.testing.assert_array_equal(pixels_to_array(array_to_pixels(images).slice(4), (4, 4, 3)), images[4:])


def test_pixels_round_trip_chunked(images):
    column = array_to_pixels(images)
    chunked = pa.chunked_array([column.slice(0, 2), column.slice(2, 3)])
    np.testing.assert_array_equal(pixels_to_array(chunked, (4, 4, 3)), images)
    skipping = pa.chunked_array([column.slice(1, 1), column.slice(3, 2)])
    np.testing.assert_array_equal(pixels_to_array(skipping, (4, 4, 3)), images[[1, 3, 4]])


def test_pixels_round_trip_through_parquet(tmp_path, images):
    table = pa.table({"pixels": array_to_pixels(images)})
    write_shard(str(tmp_path), "p.parquet", table)
    back = read_shards(str(tmp_path), ["p.parquet"]).column("pixels")
    np.testing.assert_array_equal(pixels_to_array(back, (4, 4, 3)), images)


def test_array_to_pixels_accepts_non_contiguous(images):
    view = images[:, ::-1]  # negative stride view
    np.testing.assert_array_equal(pixels_to_array(array_to_pixels(view), (4, 4, 3)), view)


def test_fixed_list_round_trip():
    values = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    column = array_to_fixed_list(values)
    assert column.type == pa.list_(pa.float32(), 4)
    np.testing.assert_array_equal(fixed_list_to_array(column), values)
    np.testing.assert_array_equal(fixed_list_to_array(column.slice(2, 3)), values[2:5])
    chunked = pa.chunked_array([column.slice(0, 1), column.slice(1, 5)])
    back = fixed_list_to_array(chunked)
    assert back.shape == (6, 4)
    np.testing.assert_array_equal(back, values)


def test_fixed_list_from_float64_is_float32():
    values = np.array([[1.5, 2.0], [3.0, -4.25]], dtype=np.float64)
    column = array_to_fixed_list(values)
    assert column.type.value_type == pa.float32()
    np.testing.assert_array_equal(fixed_list_to_array(column), values.astype(np.float32))


# pack_mask / unpack_mask ----------------------------------------------------------------

def test_unpack_mask_none_is_all_false():
    mask = unpack_mask(None, 3, 5)
    assert mask.shape == (3, 5) and mask.dtype == bool
    assert not mask.any()


def test_unpack_mask_round_trip_odd_size():
    mask = np.random.default_rng(0).random((3, 5)) < 0.5
    packed = np.packbits(mask).tobytes()
    assert len(packed) == 2
    np.testing.assert_array_equal(unpack_mask(packed, 3, 5), mask)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 4), (7, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_pack_mask_round_trip(shape):
    mask = np.random.default_rng(sum(shape)).random(shape) < 0.5
    mask[0, 0], mask[-1, -1] = True, False  # not all one value
    packed = pack_mask(mask)
    assert isinstance(packed, bytes) and len(packed) == -(-mask.size // 8)
    assert packed == np.packbits(mask).tobytes()  # the stored form ingest has always written
    back = unpack_mask(packed, *shape)
    assert back.dtype == bool
    np.testing.assert_array_equal(back, mask)


def test_pack_mask_none_is_none_and_reads_back_as_no_holes():
    assert pack_mask(None) is None
    assert not unpack_mask(pack_mask(None), 2, 3).any()
