"""Tests for the pure parts of fusion_core.ingest (no Ray)."""

from __future__ import annotations

import hashlib
import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fusion_core.datasets import IMAGES_SCHEMA
from fusion_core.ingest import (
    QuarantineError,
    decode_image,
    hash_files,
    ingest_chunk,
    list_source_files,
    split_for,
    unpack_mask,
)

MAX = 10_000_000


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(h=5, w=7, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _rgba_with_hole(h=6, w=8, seed=1) -> tuple[np.ndarray, np.ndarray]:
    rgba = np.random.default_rng(seed).integers(0, 256, size=(h, w, 4), dtype=np.uint8)
    rgba[..., 3] = np.maximum(rgba[..., 3], 1)  # fully known ...
    hole = np.zeros((h, w), dtype=bool)
    hole[1:3, 2:5] = True
    hole[5, 0] = True
    rgba[hole, 3] = 0  # ... except the hole
    return rgba, hole


def _reason(data: bytes, max_pixels: int = MAX) -> str:
    with pytest.raises(QuarantineError) as info:
        decode_image(data, max_pixels)
    return info.value.reason


# list_source_files ------------------------------------------------------------

def test_list_source_files_labels_hidden_and_nesting(tmp_path):
    files = ["root.png", "cat/a.png", "cat/b.jpg", "cat/deep/er/c.png", "dog/z.png",
             ".hidden.png", "cat/.DS_Store", ".git/x.png", "dog/.cache/y.png"]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found = list_source_files(tmp_path)
    expected = [(str(tmp_path / "cat" / "a.png"), "cat"),
                (str(tmp_path / "cat" / "b.jpg"), "cat"),
                (str(tmp_path / "cat" / "deep" / "er" / "c.png"), "cat"),
                (str(tmp_path / "dog" / "z.png"), "dog"),
                (str(tmp_path / "root.png"), None)]
    assert found == expected
    assert found == sorted(found)
    assert list_source_files(str(tmp_path)) == expected


def test_list_source_files_empty_folder(tmp_path):
    assert list_source_files(tmp_path) == []


def test_list_source_files_missing_or_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_source_files(tmp_path / "missing")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        list_source_files(tmp_path / "f.png")


# decode_image -----------------------------------------------------------------------

def test_decode_rgb_png_exact():
    rgb = _rgb()
    pixels, mask = decode_image(_encode(Image.fromarray(rgb)), MAX)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (5, 7, 3)
    np.testing.assert_array_equal(pixels, rgb)
    assert mask is None


def test_decode_rgba_png_mask_exactly_on_transparent_pixels():
    rgba, hole = _rgba_with_hole()
    pixels, mask = decode_image(_encode(Image.fromarray(rgba, "RGBA")), MAX)
    assert pixels.shape == (6, 8, 3)
    np.testing.assert_array_equal(pixels, rgba[..., :3])
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, hole)


def test_decode_opaque_rgba_has_no_mask():
    rgba = np.full((3, 3, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 255
    pixels, mask = decode_image(_encode(Image.fromarray(rgba, "RGBA")), MAX)
    assert pixels.shape == (3, 3, 3)
    assert mask is None


def test_decode_la_png_is_single_channel_with_mask():
    la = np.zeros((4, 4, 2), dtype=np.uint8)
    la[..., 0] = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    la[..., 1] = 255
    la[0, 0, 1] = 0
    pixels, mask = decode_image(_encode(Image.fromarray(la, "LA")), MAX)
    assert pixels.shape == (4, 4, 1)
    np.testing.assert_array_equal(pixels[..., 0], la[..., 0])
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 0] = True
    np.testing.assert_array_equal(mask, expected)


def test_decode_grayscale_png():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    pixels, mask = decode_image(_encode(Image.fromarray(gray, "L")), MAX)
    assert pixels.shape == (3, 4, 1)
    np.testing.assert_array_equal(pixels[..., 0], gray)
    assert mask is None


def test_decode_16bit_grayscale_png_scaled_to_uint8():
    raw = np.array([[0, 257, 65535], [32768, 1000, 60000]], dtype=np.uint16)
    img = Image.fromarray(raw)
    assert img.mode == "I;16"
    data = _encode(img)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels, mask = decode_image(data, MAX)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (2, 3, 1)
    # round(v * 255 / 65535): 257 -> 1, 32768 -> 128, 1000 -> 4, 60000 -> 233
    np.testing.assert_array_equal(pixels[..., 0], [[0, 1, 255], [128, 4, 233]])
    assert mask is None


def test_decode_palette_png_to_rgb():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0] = [255, 0, 0]
    rgb[1] = [0, 0, 255]
    rgb[1, 2] = [0, 255, 0]
    img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert img.mode == "P"
    data = _encode(img)
    assert Image.open(io.BytesIO(data)).mode == "P"
    pixels, mask = decode_image(data, MAX)
    assert pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(pixels, rgb)
    assert mask is None


def test_decode_palette_png_with_transparency_gives_mask():
    img = Image.new("P", (3, 2), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.putpixel((2, 0), 0)
    data = _encode(img, transparency=0)
    pixels, mask = decode_image(data, MAX)
    assert pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(pixels[1, 1], [10, 20, 30])
    np.testing.assert_array_equal(mask, [[False, False, True], [False, False, False]])


def test_decode_jpeg_applies_exif_orientation():
    rgb = _rgb(4, 6, seed=2)
    plain = _encode(Image.fromarray(rgb), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = _encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif)
    plain_px, plain_mask = decode_image(plain, MAX)
    rot_px, rot_mask = decode_image(rotated, MAX)
    assert plain_px.shape == (4, 6, 3)
    assert rot_px.shape == (6, 4, 3)
    np.testing.assert_array_equal(rot_px, np.rot90(plain_px, k=-1))
    assert plain_mask is None and rot_mask is None


def test_decode_jpeg_with_exif_and_gps_gives_pixels_only():
    rgb = _rgb(5, 3, seed=3)
    exif = Image.Exif()
    exif[0x010F] = "ACME Camera"          # Make
    exif[0x0112] = 1                      # Orientation: normal
    exif.get_ifd(0x8825)[2] = (52.0, 22.0, 12.0)   # GPSLatitude
    exif.get_ifd(0x8825)[1] = "N"                  # GPSLatitudeRef
    data = _encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)
    plain_px, _ = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=95), MAX)
    result = decode_image(data, MAX)
    assert isinstance(result, tuple) and len(result) == 2
    pixels, mask = result
    assert isinstance(pixels, np.ndarray) and pixels.shape == (5, 3, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, plain_px)
    assert mask is None


def test_decode_ignores_file_extension(tmp_path):
    rgb = _rgb(3, 3, seed=4)
    path = tmp_path / "actually_png.jpg"
    path.write_bytes(_encode(Image.fromarray(rgb), "PNG"))
    pixels, _ = decode_image(path.read_bytes(), MAX)
    np.testing.assert_array_equal(pixels, rgb)


def test_decode_errors_have_reasons():
    png = _encode(Image.fromarray(_rgb(32, 32, seed=5)))
    assert _reason(b"") == "empty_file"
    assert _reason(b"not an image") == "not_an_image"
    assert _reason(png[: len(png) // 2]) == "decode_error"
    assert _reason(png, max_pixels=32 * 32 - 1) == "too_many_pixels"
    pixels, _ = decode_image(png, max_pixels=32 * 32)
    assert pixels.shape == (32, 32, 3)


def test_quarantine_error_message():
    with pytest.raises(QuarantineError, match=r"8x4 exceeds ingest.max_pixels=10"):
        decode_image(_encode(Image.fromarray(_rgb(4, 8))), 10)


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


# hash_files -----------------------------------------------------------------------------

def test_hash_files(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"hello")
    b.write_bytes(b"")
    folder = tmp_path / "dir"
    folder.mkdir()
    missing = tmp_path / "missing.png"
    out = hash_files([(str(a), "x"), (str(b), None), (str(folder), "y"), (str(missing), None)])
    assert out[0] == {"source": str(a), "label": "x", "image_id": hashlib.sha256(b"hello").hexdigest()}
    assert out[1] == {"source": str(b), "label": None, "image_id": hashlib.sha256(b"").hexdigest()}
    for item, path, label in ((out[2], folder, "y"), (out[3], missing, None)):
        assert item["source"] == str(path)
        assert item["label"] == label
        assert item["image_id"] == ""
        assert item["error"][0] == "unreadable"
        assert isinstance(item["error"][1], str) and item["error"][1]
    assert out[3]["error"][1].startswith("FileNotFoundError")
    assert hash_files([]) == []


# ingest_chunk ---------------------------------------------------------------------------

@pytest.fixture
def chunk_files(tmp_path):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    rgb = _rgb(5, 7, seed=10)
    rgba, hole = _rgba_with_hole(6, 8, seed=11)
    gray = np.arange(9, dtype=np.uint8).reshape(3, 3) * 25
    (src / "cat" / "rgb.png").write_bytes(_encode(Image.fromarray(rgb)))
    (src / "cat" / "rgba.png").write_bytes(_encode(Image.fromarray(rgba, "RGBA")))
    (src / "gray.jpg").write_bytes(_encode(Image.fromarray(gray, "L")))  # PNG bytes, wrong extension
    (src / "cat" / "bad.png").write_bytes(b"not an image")
    items = hash_files(list_source_files(src))
    expected = {str(src / "cat" / "rgb.png"): (rgb, None),
                str(src / "cat" / "rgba.png"): (rgba[..., :3], hole),
                str(src / "gray.jpg"): (gray[..., None], None)}
    return tmp_path / "store", items, expected


def test_ingest_chunk_writes_shard_and_quarantines(chunk_files):
    store_root, items, expected = chunk_files
    root = str(store_root.resolve())
    assert all("error" not in i for i in items)
    entry, bad = ingest_chunk(root, items, 0.1, 0.2, MAX)

    good = [i for i in items if i["source"] in expected]
    corrupt = next(i for i in items if i["source"].endswith("bad.png"))
    assert entry["num_rows"] == 3
    assert entry["path"].startswith("datasets/images/") and entry["path"].endswith(".parquet")
    table = pq.read_table(store_root / entry["path"])
    assert table.schema.equals(IMAGES_SCHEMA, check_metadata=True)
    assert table.column("image_id").to_pylist() == [i["image_id"] for i in good]
    assert sorted(table.column("source").to_pylist()) == sorted(expected)

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

    assert bad == [{"source": corrupt["source"], "content_hash": corrupt["image_id"], "stage": "ingest",
                    "error_class": "not_an_image", "message": bad[0]["message"]}]
    assert bad[0]["message"]


def test_ingest_chunk_is_deterministic(chunk_files):
    store_root, items, _ = chunk_files
    root = str(store_root.resolve())
    first, bad1 = ingest_chunk(root, items, 0.1, 0.2, MAX)
    data1 = pq.read_table(store_root / first["path"])
    second, bad2 = ingest_chunk(root, items, 0.1, 0.2, MAX)
    assert second == first
    # messages may embed object addresses; everything else is stable
    strip = lambda rows: [{k: v for k, v in r.items() if k != "message"} for r in rows]  # noqa: E731
    assert strip(bad2) == strip(bad1)
    assert pq.read_table(store_root / second["path"]).equals(data1)
    assert [p.name for p in (store_root / "datasets" / "images").iterdir()] == [first["path"].rsplit("/", 1)[1]]
    good_ids = "".join(i["image_id"] for i in items if not i["source"].endswith("bad.png"))
    assert first["path"] == f"datasets/images/{hashlib.sha256(good_ids.encode()).hexdigest()[:20]}.parquet"


def test_ingest_chunk_unreadable_and_all_bad(tmp_path):
    root = str((tmp_path / "store").resolve())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    big = tmp_path / "big.png"
    big.write_bytes(_encode(Image.fromarray(_rgb(10, 10))))
    items = [{"source": str(tmp_path / "gone.png"), "label": None, "image_id": "ab" * 32},
             {"source": str(empty), "label": None, "image_id": "cd" * 32},
             {"source": str(big), "label": "x", "image_id": "ef" * 32}]
    entry, bad = ingest_chunk(root, items, 0.1, 0.2, max_pixels=50)
    assert entry is None
    assert [(b["content_hash"], b["stage"], b["error_class"]) for b in bad] == [
        ("ab" * 32, "ingest", "unreadable"), ("cd" * 32, "ingest", "empty_file"),
        ("ef" * 32, "ingest", "too_many_pixels")]
    assert not (tmp_path / "store" / "datasets").exists()
    assert ingest_chunk(root, [], 0.1, 0.2, MAX) == (None, [])


# unpack_mask ----------------------------------------------------------------------------

def test_unpack_mask_none_is_all_false():
    mask = unpack_mask(None, 3, 5)
    assert mask.shape == (3, 5) and mask.dtype == bool
    assert not mask.any()


def test_unpack_mask_round_trip_odd_size():
    mask = np.random.default_rng(0).random((3, 5)) < 0.5
    packed = np.packbits(mask).tobytes()
    assert len(packed) == 2
    np.testing.assert_array_equal(unpack_mask(packed, 3, 5), mask)


def test_images_table_pixels_column_is_binary():
    # the shard stores raw HWC bytes in a variable-size binary column
    assert IMAGES_SCHEMA.field("pixels").type == pa.binary()
    assert IMAGES_SCHEMA.field("mask").nullable
