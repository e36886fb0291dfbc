"""Parquet shards under the store root: schemas, atomic writes, reads.

A shard is written to a temporary name and moved into place; it becomes part
of a dataset only when a catalog manifest lists it (see ``store.commit_version``).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fusion_core import uri

SCHEMA_VERSION = "1"

IMAGES_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("split", pa.string(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("channels", pa.int8(), nullable=False),
    pa.field("pixels", pa.binary(), nullable=False),  # raw uint8 HWC
    pa.field("mask", pa.binary()),  # np.packbits of the HxW missing-pixel mask, null when complete
], metadata={"fusion.dataset": "images", "fusion.schema_version": SCHEMA_VERSION})


def pixels_schema(height: int, width: int, channels: int) -> pa.Schema:
    """Fixed-shape uint8 pixels ready for the model, one row per image."""
    return pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("pixels", pa.binary(height * width * channels), nullable=False),
        pa.field("imputed_fraction", pa.float32(), nullable=False),
        pa.field("impute_method", pa.string()),
    ], metadata={"fusion.dataset": "pixels", "fusion.schema_version": SCHEMA_VERSION,
                 "fusion.shape": f"{height},{width},{channels}"})


def predictions_schema(n_classes: int, embedding_dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("split", pa.string()),
        pa.field("predicted", pa.string(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("top_k", pa.list_(pa.string()), nullable=False),
        pa.field("probs", pa.list_(pa.float32(), n_classes), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), embedding_dim), nullable=False),
    ], metadata={"fusion.dataset": "predictions", "fusion.schema_version": SCHEMA_VERSION})


def pack_mask(mask: np.ndarray | None) -> bytes | None:
    """The stored form of an (H, W) missing-pixel mask (None: no mask)."""
    return None if mask is None else np.packbits(mask).tobytes()


def unpack_mask(packed: bytes | None, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask stored by ingest (all False when none was stored)."""
    if packed is None:
        return np.zeros((height, width), dtype=bool)
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)


def write_shard(root: str, rel_path: str, table: pa.Table, row_group_size: int = 4096) -> dict:
    """Write a table as one zstd Parquet shard at ``root/rel_path``, atomically where the filesystem allows.

    The table's schema, with its metadata (dataset name and schema version), is stored in the file.

    Returns:
        The manifest entry ``{"path": rel_path, "num_rows": n, "checksum": sha256 of the file}``.
    """
    fs, final = uri.filesystem(uri.join(root, rel_path))
    fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    data = sink.getvalue()
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, final)
    except BaseException:  # a full disk or a failing object store: leave no partial file behind
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    return {"path": rel_path, "num_rows": table.num_rows, "checksum": hashlib.sha256(data).hexdigest()}


def shard_checksum(root: str, rel_path: str, chunk: int = 8 * 2**20) -> str:
    """The sha256 of a written shard's bytes, read in chunks."""
    digest = hashlib.sha256()
    with uri.open_input(uri.join(root, rel_path)) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def delete_shard(root: str, rel_path: str) -> None:
    """Remove a shard that no committed version lists."""
    uri.delete_file(uri.join(root, rel_path))


def read_shard(root: str, rel_path: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    """Read one shard, optionally only some columns and the rows matching ``filters`` (pushed down)."""
    fs, path = uri.filesystem(uri.join(root, rel_path))
    return pq.read_table(path, columns=columns, filters=filters, filesystem=fs)


def read_shards(root: str, rel_paths: list[str], columns: list[str] | None = None, filters=None) -> pa.Table:
    """Read shards of one dataset version into a single table."""
    tables = [read_shard(root, p, columns, filters) for p in rel_paths]
    return pa.concat_tables(tables) if tables else pa.table({})


def iter_shard_batches(root: str, rel_path: str, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    """A shard's rows in batches of at most ``rows``, reading only ``columns``."""
    fs, path = uri.filesystem(uri.join(root, rel_path))
    yield from pq.ParquetFile(path, filesystem=fs).iter_batches(batch_size=rows, columns=columns)


def iter_rows(root: str, rel_paths: list[str], columns: list[str], batch_rows: int = 8192) -> Iterator[dict]:
    """The rows of shards as dicts, read a batch at a time."""
    for rel_path in rel_paths:
        for batch in iter_shard_batches(root, rel_path, columns, batch_rows):
            yield from batch.to_pylist()


def shard_rows(root: str, rel_path: str) -> int:
    """Rows of a written shard, from its footer."""
    fs, path = uri.filesystem(uri.join(root, rel_path))
    return pq.ParquetFile(path, filesystem=fs).metadata.num_rows


def shard_files(root: str, rel_paths: list[str]) -> tuple[pafs.FileSystem, list[str]]:
    """The store's filesystem and the shards' paths inside it, for readers such as Ray Data
    (``read_parquet(paths, filesystem=fs)``), so that they reach the same endpoint as the store."""
    fs, base = uri.filesystem(root)
    return fs, [f"{base.rstrip('/')}/{p.strip('/')}" for p in rel_paths]


def shape_of(schema: pa.Schema) -> tuple[int, int, int]:
    """The (H, W, C) stored in a pixels schema's metadata."""
    return tuple(int(v) for v in schema.metadata[b"fusion.shape"].decode().split(","))


def pixels_to_array(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """View a fixed-size-binary pixels column as a uint8 array of shape (N, *shape), copying at most once."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = int(np.prod(shape))
    data = np.frombuffer(column.buffers()[1], dtype=np.uint8)
    start = column.offset * width
    return data[start:start + len(column) * width].reshape(len(column), *shape)


def array_to_pixels(images: np.ndarray) -> pa.Array:
    """Pack a uint8 (N, H, W, C) array into a fixed-size-binary column."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    width = int(np.prod(images.shape[1:]))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(images),
                                                [None, pa.py_buffer(images.tobytes())])


def array_to_fixed_list(values: np.ndarray) -> pa.Array:
    """Pack a float32 (N, D) array into a fixed-size-list column."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def fixed_list_to_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Unpack a fixed-size-list column into a (N, D) numpy array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def images_shard_stem(pixels_shard: str) -> str:
    """The name (without folder and suffix) of the images shard a pixels shard was made from."""
    return PurePosixPath(pixels_shard).stem.rsplit("-", 1)[0]
