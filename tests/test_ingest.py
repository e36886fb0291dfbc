"""Tests for decoding (fusion_core.decode) and the one-pass ingest task (fusion_core.ingest), no Ray."""

from __future__ import annotations

import hashlib
import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fusion_core.config import IngestConfig
from fusion_core.datasets import IMAGES_SCHEMA
from fusion_core.decode import QuarantineError, decode_image
from fusion_core.ingest import ingest_chunk, split_for, unpack_mask
from fusion_core.sources import iter_items

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
    assert _reason(b"\x89PNG\r\n\x1a\n" + b"\0" * 40) in ("truncated", "decode_error")
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


# more formats, metadata, missing pixels ---------------------------------------------------------

def _gradient(h=24, w=16) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 9 % 256, xx * 13 % 256, (yy + xx) * 5 % 256], -1).astype(np.uint8)


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                                     ("WEBP", {"lossless": True}), ("GIF", {})])
def test_decode_lossless_formats_exact(fmt, kw):
    rgb = _gradient()
    img = Image.fromarray(rgb)
    if fmt == "GIF":  # palette format: keep to a few colours so the palette is exact
        rgb = (rgb // 64 * 64).astype(np.uint8)
        img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pixels, mask = decode_image(_encode(img, fmt, **kw), MAX)
    np.testing.assert_array_equal(pixels, rgb)
    assert mask is None


def test_decode_gif_first_frame_of_animation():
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)).convert("P") for v in (0, 255)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    pixels, _ = decode_image(data, MAX)
    assert (pixels == 0).all()


def test_decode_16bit_tiff_and_rgba_webp():
    raw = np.array([[0, 65535], [257, 32768]], dtype=np.uint16)
    pixels, _ = decode_image(_encode(Image.fromarray(raw), "TIFF"), MAX)
    np.testing.assert_array_equal(pixels[..., 0], [[0, 255], [1, 128]])
    rgba, hole = _rgba_with_hole()
    pixels, mask = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True), MAX)
    np.testing.assert_array_equal(mask, hole)
    np.testing.assert_array_equal(pixels[~hole], rgba[..., :3][~hole])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation):
    rgb = _gradient(8, 16)  # JPEG blocks align, so the rotation is exact
    exif = Image.Exif()
    exif[0x0112] = orientation
    plain, _ = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=95), MAX)
    pixels, _ = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif), MAX)
    expected = {1: plain, 2: plain[:, ::-1], 3: plain[::-1, ::-1], 4: plain[::-1],
                5: plain.transpose(1, 0, 2), 6: np.rot90(plain, -1), 7: np.rot90(plain[::-1], 1),
                8: np.rot90(plain, 1)}[orientation]
    np.testing.assert_array_equal(pixels, expected)


def test_jpeg_fast_path_gives_pillows_pixels():
    from fusion_core.decode import _decode_with_pillow

    rgb = _gradient(40, 56)
    gray = rgb[..., 0]
    for img, kw in ((Image.fromarray(rgb), {"quality": 90}), (Image.fromarray(rgb), {"subsampling": 0}),
                    (Image.fromarray(rgb), {"progressive": True}), (Image.fromarray(rgb), {"restart_marker_blocks": 1}),
                    (Image.fromarray(gray), {})):
        data = _encode(img, "JPEG", **kw)
        np.testing.assert_array_equal(decode_image(data, MAX)[0], _decode_with_pillow(data, MAX)[0])


def test_metadata_is_dropped_and_pixels_are_the_oriented_original(tmp_path):
    rgb = _gradient(8, 16)
    exif = Image.Exif()
    exif[0x010F] = "ACME Camera"
    exif[0x0112] = 8
    exif.get_ifd(0x8825)[2] = (52.0, 22.0, 12.0)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SECRET-XMP</x:xmpmeta>'
    jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif, xmp=xmp, comment=b"SECRET-COMMENT")
    png = _encode(Image.fromarray(rgb), "PNG", exif=exif, pnginfo=_png_text("SECRET-TEXT"))
    (tmp_path / "a.jpg").write_bytes(jpeg)
    (tmp_path / "b.png").write_bytes(png)
    out = ingest_chunk(str(tmp_path / "store"), list(iter_items(str(tmp_path), [])), IngestConfig())
    shard = tmp_path / "store" / out["shards"][0]["path"]
    raw = shard.read_bytes()
    for secret in (b"ACME", b"SECRET-XMP", b"SECRET-COMMENT", b"SECRET-TEXT", b"Exif"):
        assert secret not in raw
    rows = {r["source"].rsplit("/", 1)[1]: r for r in pq.read_table(shard).to_pylist()}
    plain, _ = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=95), MAX)
    for name, expected in (("a.jpg", np.rot90(plain, 1)), ("b.png", np.rot90(rgb, 1))):
        r = rows[name]
        stored = np.frombuffer(r["pixels"], np.uint8).reshape(r["height"], r["width"], r["channels"])
        np.testing.assert_array_equal(stored, expected)


def _png_text(text):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    return info


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "TIFF"])
def test_truncated_file_keeps_decoded_rows_and_masks_the_rest(fmt):
    rgb = _gradient(64, 48)
    img = Image.fromarray(rgb) if fmt != "GIF" else Image.fromarray(rgb // 64 * 64).convert("P", colors=64)
    data = _encode(img, fmt)
    full, _ = decode_image(data, MAX)
    pixels, mask = decode_image(data[: int(len(data) * 0.7)], MAX)
    assert mask is not None and 0 < mask.sum() < mask.size
    first, last = (0, -1) if fmt != "BMP" else (-1, 0)  # BMP stores the bottom row first
    assert mask[last].all() and not mask[first].any()  # the end of the file is lost, the start is kept
    np.testing.assert_array_equal(pixels[~mask], full[~mask])


def test_truncated_baseline_jpeg_masks_from_the_first_lost_block():
    data = _encode(Image.fromarray(_gradient(64, 48)), "JPEG", quality=90)
    full, _ = decode_image(data, MAX)
    pixels, mask = decode_image(data[: int(len(data) * 0.9)], MAX)
    assert 0 < mask.sum() < mask.size and mask[-1].all() and not mask[0].any()
    np.testing.assert_array_equal(pixels[~mask], full[~mask])


def test_truncated_beyond_use():
    png = _encode(Image.fromarray(_gradient()))
    jpeg = _encode(Image.fromarray(_gradient()), "JPEG", progressive=True)
    assert _reason(png[:40]) == "truncated"        # header only
    assert _reason(png[:12]) == "truncated"        # not even a header
    assert _reason(jpeg[: len(jpeg) - 50]) == "truncated"  # progressive: no pixel is final


def test_explicit_mask_is_merged_with_alpha_and_checked():
    rgba, hole = _rgba_with_hole()
    extra = np.zeros(hole.shape, np.uint8)
    extra[0, 0] = 1
    pixels, mask = decode_image(_encode(Image.fromarray(rgba, "RGBA")), MAX, _encode(Image.fromarray(extra, "L")))
    np.testing.assert_array_equal(mask, hole | (extra > 0))
    with pytest.raises(QuarantineError) as info:
        decode_image(_encode(Image.fromarray(rgba, "RGBA")), MAX, _encode(Image.fromarray(extra[:2], "L")))
    assert info.value.reason == "bad_mask"


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _encode(Image.new("1", (12_000, 12_000)), "PNG")  # 144 Mpx in a few hundred kB
    assert len(bomb) < 1_000_000
    assert _reason(bomb, max_pixels=50_000_000) == "too_many_pixels"
    assert _reason(bomb, max_pixels=200_000_000) == "too_many_pixels"  # Pillow's own bomb limit
    big = _encode(Image.fromarray(_gradient(64, 64)), "JPEG")
    assert _reason(big, max_pixels=64 * 64 - 1) == "too_many_pixels"  # the JPEG fast path checks too


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
    (src / "cat" / "copy.png").write_bytes(_encode(Image.fromarray(rgb)))  # same content, other path
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
    known = frozenset(first["shards"][0]["image_ids"][:2])
    third = ingest_chunk(str(store_root), items, IngestConfig(), known)
    assert [s["num_rows"] for s in third["shards"]] == [1] and len(third["sources"]) == 4


def test_ingest_chunk_takes_splits_from_split_folders(tmp_path):
    src = tmp_path / "src"
    for k, split in enumerate(("train", "test", "val")):
        (src / split / "cat").mkdir(parents=True)
        for i in range(40):
            (src / split / "cat" / f"{i}.png").write_bytes(_encode(Image.fromarray(_rgb(2, 2, seed=100 * k + i))))
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
    png = _encode(Image.fromarray(_gradient()))
    files = {"empty.png": b"", "text.png": b"not an image at all", "head.png": png[:30],
             "bomb.png": _encode(Image.new("1", (8_000, 8_000)), "PNG"), "big.png": b"\x89PNG" + b"\0" * 100_000,
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
