"""Tests for the one-pass ingest task (fusion_core.stages.ingest), no Ray. Decoding is tested in test_decode.py."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import encode_image, gradient_rgb, random_rgb, rgba_with_hole
from fusion_core.config import IngestConfig
from fusion_core.data.decode import decode_image
from fusion_core.data.sources import iter_items
from fusion_core.stages.ingest import id_keys, ingest_chunk, later_duplicates, split_for
from fusion_core.store.datasets import IMAGES_SCHEMA, unpack_mask

MAX = 10_000_000


# split_for ----------------------------------------------------------------------------

def test_split_for_deterministic_and_fractions():
    rnd = random.Random(0)
    ids = [f"{rnd.getrandbits(256):064x}" for _ in range(5000)]
    splits = [split_for(i, 0.1, 0.2) for i in ids]
    assert splits == [split_for(i, 0.1, 0.2) for i in ids]
    assert set(splits) == {"train", "val", "test"}
    n = len(ids)
    assert abs(splits.count("test") / n - 0.2) < 0.03
    assert abs(splits.count("val") / n - 0.1) < 0.03
    assert abs(splits.count("train") / n - 0.7) < 0.03


def test_split_for_boundaries():
    assert split_for("00000000" + "f" * 56, 0.1, 0.2) == "test"
    assert split_for("ffffffff" + "0" * 56, 0.1, 0.2) == "train"
    assert split_for("40000000" + "0" * 56, 0.1, 0.2) == "val"       # u = 0.25
    assert split_for("33333333" + "0" * 56, 0.1, 0.2) == "test"      # u just below 0.2
    assert split_for("80000000", 0.0, 0.0) == "train"
    # the split depends only on the first 8 hex digits
    assert split_for("12345678" + "0" * 56, 0.3, 0.3) == split_for("12345678" + "f" * 56, 0.3, 0.3)


def test_split_for_keeps_a_given_split_and_carves_val_from_train():
    rng = random.Random(1)
    ids = [f"{rng.getrandbits(256):064x}" for _ in range(20_000)]
    for given in ("val", "test"):
        assert {split_for(i, 0.1, 0.2, given) for i in ids} == {given}
    from_train = [split_for(i, 0.1, 0.2, "train") for i in ids]
    assert set(from_train) == {"train", "val"}
    assert abs(from_train.count("val") / len(ids) - 0.1 / 0.8) < 0.01  # val_fraction of what is not test
    assert split_for("1fffffff", 0.1, 0.2, "train") == "val"    # u just below 0.125
    assert split_for("20000000", 0.1, 0.2, "train") == "train"  # u = 0.125
    assert {split_for(i, 0.0, 0.2, "train") for i in ids} == {"train"}
    assert [split_for(i, 0.1, 0.2, None) for i in ids[:50]] == [split_for(i, 0.1, 0.2) for i in ids[:50]]


# metadata ---------------------------------------------------------------------------------

def test_metadata_is_dropped_and_pixels_are_the_oriented_original(tmp_path):
    rgb = gradient_rgb(8, 16)
    exif = Image.Exif()
    exif[0x010F] = "ACME Camera"
    exif[0x0112] = 8
    exif.get_ifd(0x8825)[2] = (52.0, 22.0, 12.0)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SECRET-XMP</x:xmpmeta>'
    jpeg = encode_image(Image.fromarray(rgb), "JPEG", quality=95, exif=exif, xmp=xmp, comment=b"SECRET-COMMENT")
    png = encode_image(Image.fromarray(rgb), "PNG", exif=exif, pnginfo=_png_text("SECRET-TEXT"))
    (tmp_path / "a.jpg").write_bytes(jpeg)
    (tmp_path / "b.png").write_bytes(png)
    out = ingest_chunk(str(tmp_path / "store"), list(iter_items(str(tmp_path), [])), IngestConfig())
    shard = tmp_path / "store" / out["shards"][0]["path"]
    raw = shard.read_bytes()
    for secret in (b"ACME", b"SECRET-XMP", b"SECRET-COMMENT", b"SECRET-TEXT", b"Exif"):
        assert secret not in raw
    rows = {r["source"].rsplit("/", 1)[1]: r for r in pq.read_table(shard).to_pylist()}
    plain, _ = decode_image(encode_image(Image.fromarray(rgb), "JPEG", quality=95), MAX)
    for name, expected in (("a.jpg", np.rot90(plain, 1)), ("b.png", np.rot90(rgb, 1))):
        r = rows[name]
        stored = np.frombuffer(r["pixels"], np.uint8).reshape(r["height"], r["width"], r["channels"])
        np.testing.assert_array_equal(stored, expected)


def _png_text(text):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    return info


# ingest_chunk ---------------------------------------------------------------------------

@pytest.fixture
def chunk_files(tmp_path):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    rgb = random_rgb(5, 7, seed=10)
    rgba, hole = rgba_with_hole(6, 8, seed=11)
    gray = np.arange(9, dtype=np.uint8).reshape(3, 3) * 25
    (src / "cat" / "rgb.png").write_bytes(encode_image(Image.fromarray(rgb)))
    (src / "cat" / "rgba.png").write_bytes(encode_image(Image.fromarray(rgba, "RGBA")))
    (src / "gray.jpg").write_bytes(encode_image(Image.fromarray(gray, "L")))  # PNG bytes, wrong extension
    (src / "cat" / "copy.png").write_bytes(encode_image(Image.fromarray(rgb)))  # same content, other path
    expected = {str(src / "cat" / "copy.png"): (rgb, None),  # the first path of that content
                str(src / "cat" / "rgba.png"): (rgba[..., :3], hole),
                str(src / "gray.jpg"): (gray[..., None], None)}
    return tmp_path / "store", list(iter_items(str(src), [])), expected, src


def test_ingest_chunk_writes_one_row_per_content_and_records_every_path(chunk_files):
    store_root, items, expected, src = chunk_files
    out = ingest_chunk(str(store_root), items, IngestConfig(val_fraction=0.1, test_fraction=0.2))
    assert out["quarantine"] == []
    (shard,) = out["shards"]
    assert shard["path"].startswith("datasets/images/") and shard["num_rows"] == 3
    table = pq.read_table(store_root / shard["path"])
    assert table.schema.equals(IMAGES_SCHEMA, check_metadata=True)
    assert sorted(table.column("image_id").to_pylist()) == sorted(shard["image_ids"])
    for row in table.to_pylist():
        pixels, hole = expected[row["source"]]
        h, w, c = pixels.shape
        assert (row["height"], row["width"], row["channels"]) == (h, w, c)
        np.testing.assert_array_equal(np.frombuffer(row["pixels"], np.uint8).reshape(h, w, c), pixels)
        assert row["label"] == ("cat" if "/cat/" in row["source"] else None)
        assert row["split"] == split_for(row["image_id"], 0.1, 0.2)
        if hole is None:
            assert row["mask"] is None
        else:
            np.testing.assert_array_equal(unpack_mask(row["mask"], h, w), hole)
    rgb_id = hashlib.sha256((src / "cat" / "rgb.png").read_bytes()).hexdigest()
    assert {(rgb_id, str(src / "cat" / "copy.png")), (rgb_id, str(src / "cat" / "rgb.png"))} <= set(out["sources"])
    assert len(out["sources"]) == 4


def test_ingest_chunk_shards_are_zstd_with_schema_version_and_sized_row_groups(chunk_files):
    store_root, items, _, _ = chunk_files
    cfg = IngestConfig(shard_rows=2, row_group_mb=100 / 2**20)  # 2 rows per shard, ~100 bytes per row group
    out = ingest_chunk(str(store_root), items, cfg)
    assert [s["num_rows"] for s in out["shards"]] == [2, 1]
    meta = pq.ParquetFile(store_root / out["shards"][0]["path"]).metadata
    assert meta.num_row_groups == 2
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_schema(store_root / out["shards"][0]["path"]).metadata[b"fusion.schema_version"] == b"1"
    by_bytes = ingest_chunk(str(store_root), items, IngestConfig(shard_mb=100 / 2**20))
    assert [s["num_rows"] for s in by_bytes["shards"]] == [1, 1, 1]


def test_ingest_chunk_is_deterministic_and_skips_known_ids(chunk_files):
    store_root, items, _, _ = chunk_files
    first = ingest_chunk(str(store_root), items, IngestConfig())
    second = ingest_chunk(str(store_root), items, IngestConfig())
    assert second == first
    known = set(first["shards"][0]["image_ids"][:2])
    asked = []
    third = ingest_chunk(str(store_root), items, IngestConfig(), lambda ids: asked.extend(ids) or known & set(ids))
    assert [s["num_rows"] for s in third["shards"]] == [1] and len(third["sources"]) == 4
    assert set(asked) == {image_id for image_id, _ in first["sources"]}  # every hashed item, decoded or not


def test_ingest_chunk_asks_the_catalog_in_bounded_batches(tmp_path, monkeypatch):
    import fusion_core.stages.ingest as ingest

    monkeypatch.setattr(ingest, "LOOKUP_ITEMS", 3)
    src = tmp_path / "src" / "cat"
    src.mkdir(parents=True)
    for i in range(7):
        (src / f"{i}.png").write_bytes(encode_image(Image.fromarray(random_rgb(2, 2, seed=i))))
    batches = []
    out = ingest_chunk(str(tmp_path / "store"), list(iter_items(str(tmp_path / "src"), [])), IngestConfig(),
                       lambda ids: batches.append(len(ids)) or set())
    assert batches == [3, 3, 1] and sum(s["num_rows"] for s in out["shards"]) == 7


def test_ingest_chunk_takes_splits_from_split_folders(tmp_path):
    src = tmp_path / "src"
    for k, split in enumerate(("train", "test", "val")):
        (src / split / "cat").mkdir(parents=True)
        for i in range(40):
            (src / split / "cat" / f"{i}.png").write_bytes(encode_image(Image.fromarray(random_rgb(2, 2, seed=100 * k + i))))
    out = ingest_chunk(str(tmp_path / "store"), list(iter_items(str(src), [])),
                       IngestConfig(val_fraction=0.3, test_fraction=0.2))
    rows = [r for shard in out["shards"] for r in pq.read_table(tmp_path / "store" / shard["path"]).to_pylist()]
    assert len(rows) == 120 and {r["label"] for r in rows} == {"cat"}
    by_folder = {split: [r for r in rows if f"/src/{split}/" in r["source"]] for split in ("train", "test", "val")}
    assert {r["split"] for r in by_folder["test"]} == {"test"} and {r["split"] for r in by_folder["val"]} == {"val"}
    for r in by_folder["train"]:  # val with probability 0.3 / (1 - 0.2), by content hash
        assert r["split"] == ("val" if int(r["image_id"][:8], 16) / 16**8 < 0.375 else "train")
    assert {r["split"] for r in by_folder["train"]} == {"train", "val"}


def test_ingest_chunk_bad_inputs_one_quarantine_row_each(tmp_path):
    png = encode_image(Image.fromarray(gradient_rgb()))
    files = {"empty.png": b"", "text.png": b"not an image at all", "head.png": png[:30],
             "bomb.png": encode_image(Image.new("1", (8_000, 8_000)), "PNG"), "big.png": b"\x89PNG" + b"\0" * 100_000,
             "ok.jpg": png}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    items = [(str(tmp_path / n), None, str(tmp_path / n), None, None) for n in sorted(files)]
    items.append((str(tmp_path / "gone.png"), None, str(tmp_path / "gone.png"), None, None))
    out = ingest_chunk(str(tmp_path / "store"), items, IngestConfig(max_pixels=1_000_000, max_file_mb=0.05))
    reasons = {q["source"].rsplit("/", 1)[1]: q["error_class"] for q in out["quarantine"]}
    assert reasons == {"empty.png": "empty_file", "text.png": "not_an_image", "head.png": "truncated",
                       "bomb.png": "too_many_pixels", "big.png": "too_large", "gone.png": "unreadable"}
    assert len(out["quarantine"]) == 6
    hashes = {q["source"].rsplit("/", 1)[1]: q["content_hash"] for q in out["quarantine"]}
    assert hashes["text.png"] == hashlib.sha256(b"not an image at all").hexdigest()
    assert hashes["gone.png"] == "" and hashes["big.png"] == ""
    assert all(q["stage"] == "ingest" and q["message"] for q in out["quarantine"])
    assert [s["num_rows"] for s in out["shards"]] == [1]  # ok.jpg: PNG content under a .jpg name


def test_images_table_pixels_column_is_binary():
    # the shard stores raw HWC bytes in a variable-size binary column
    assert IMAGES_SCHEMA.field("pixels").type == pa.binary()
    assert IMAGES_SCHEMA.field("mask").nullable


def test_later_duplicates_keeps_each_id_in_its_first_shard():
    a, b, z = "ab" * 32, "cd" * 32, "ef" * 31 + "00"
    twin = "ab" * 8 + "99" * 24  # the same 8-byte key as a, another id: compared in full, kept
    shards = [[a, z], ["12" * 32, a, twin], [z, b, a]]
    read = []

    def shard_ids(index):
        read.append(index)
        return shards[index]

    assert later_duplicates([id_keys(ids) for ids in shards], shard_ids) == {1: {a}, 2: {a, z}}
    assert read == [0, 1, 2]  # each shard read back once, in order
    read.clear()
    assert later_duplicates([id_keys([b]), id_keys(["12" * 32])], shard_ids) == {} and read == []
    assert later_duplicates([], shard_ids) == {}


