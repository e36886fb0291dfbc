"""Tests for the pure parts of fusion_core.stages.preprocess (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusion_core.config import IngestConfig, PreprocessConfig
from fusion_core.imaging.impute import CHOICES
from fusion_core.stages.ingest import ingest_chunk
from fusion_core.stages.preprocess import (channel_stats, pixel_sums, preprocess_batch, preprocess_shard, resize_images,
                                           set_channels)
from fusion_core.store.datasets import pixels_to_array, shape_of


def _blocky(n, h, w, c, block, seed=0):
    """Images made of constant block x block tiles."""
    small = np.random.default_rng(seed).integers(0, 256, size=(n, h // block, w // block, c), dtype=np.uint8)
    return np.repeat(np.repeat(small, block, axis=1), block, axis=2), small


# resize_images ------------------------------------------------------------------------

def test_resize_same_size_is_unchanged():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)
    out = resize_images(images, 6)
    assert out.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("c", [1, 3])
def test_resize_down_area_average_exact_on_blocks(c):
    images, small = _blocky(3, 8, 8, c, 2, seed=c)
    out = resize_images(images, 4)
    assert out.shape == (3, 4, 4, c)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, small)


def test_resize_down_one_axis_equal_uses_area_average():
    small = np.random.default_rng(0).integers(0, 256, size=(1, 8, 8, 1), dtype=np.uint8)
    tall = np.repeat(small, 2, axis=1)  # 16x8: constant 2x1 blocks
    np.testing.assert_array_equal(resize_images(tall, 8), small)


def test_resize_down_averages_block():
    img = np.zeros((1, 2, 2, 1), dtype=np.uint8)
    img[0, :, :, 0] = [[0, 100], [200, 100]]
    assert resize_images(img, 1)[0, 0, 0, 0] == 100


@pytest.mark.parametrize("c", [1, 3])
def test_resize_up(c):
    images = np.full((2, 2, 2, c), 33, dtype=np.uint8)
    images[1] = 250
    out = resize_images(images, 5)
    assert out.shape == (2, 5, 5, c)
    assert (out[0] == 33).all()
    assert (out[1] == 250).all()


def test_resize_up_interpolates_between_values():
    img = np.zeros((1, 2, 2, 1), dtype=np.uint8)
    img[0, :, 1, 0] = 200
    out = resize_images(img, 8)[0, :, :, 0]
    assert out[:, 0].tolist() == [0] * 8
    assert out[:, -1].tolist() == [200] * 8
    row = out[0].astype(int)
    assert (np.diff(row) >= 0).all()
    assert 0 < row[3] < 200


# set_channels ---------------------------------------------------------------------------

def test_set_channels_gray_to_rgb_repeats():
    gray = np.arange(8, dtype=np.uint8).reshape(2, 2, 2, 1)
    out = set_channels(gray, grayscale=False)
    assert out.shape == (2, 2, 2, 3)
    for k in range(3):
        np.testing.assert_array_equal(out[..., k], gray[..., 0])


def test_set_channels_rgb_to_gray_weights():
    rgb = np.zeros((1, 1, 5, 3), dtype=np.uint8)
    rgb[0, 0, 0] = [255, 0, 0]
    rgb[0, 0, 1] = [0, 255, 0]
    rgb[0, 0, 2] = [0, 0, 255]
    rgb[0, 0, 3] = [255, 255, 255]
    rgb[0, 0, 4] = [10, 20, 30]
    out = set_channels(rgb, grayscale=True)
    assert out.shape == (1, 1, 5, 1)
    assert out.dtype == np.uint8
    # round(255*0.299)=76, round(255*0.587)=150, round(255*0.114)=29, 255, round(2.99+11.74+3.42)=18
    assert out[0, 0, :, 0].tolist() == [76, 150, 29, 255, 18]


def test_set_channels_noop_when_already_right():
    rgb = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    gray = np.zeros((1, 2, 2, 1), dtype=np.uint8)
    assert set_channels(rgb, grayscale=False) is rgb
    assert set_channels(gray, grayscale=True) is gray


# preprocess_batch --------------------------------------------------------------------------

@pytest.mark.parametrize("method", CHOICES)
def test_preprocess_batch_keeps_known_pixels_and_fills_holes(method):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    mask = np.zeros((3, 8, 8), dtype=bool)
    mask[0, 2:5, 3:6] = True
    mask[2, 0, :] = True
    original = images.copy()
    out = preprocess_batch(images, mask, PreprocessConfig(size=8, impute_method=method))
    np.testing.assert_array_equal(images, original)  # input untouched
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], original[~mask])
    np.testing.assert_array_equal(out[1], original[1])


@pytest.mark.parametrize("method", CHOICES)
def test_preprocess_batch_constant_image_with_holes_stays_constant(method):
    images = np.full((2, 8, 8, 3), 123, dtype=np.uint8)
    mask = np.zeros((2, 8, 8), dtype=bool)
    mask[0, 1:4, 1:4] = True
    mask[1, ::2, ::3] = True
    images[mask] = 0  # garbage under the holes must not leak
    tol = 3 if method == "telea" else 0  # OpenCV's Telea drifts on flat images (see test_impute)
    out = preprocess_batch(images, mask, PreprocessConfig(size=8, impute_method=method))
    assert np.abs(out.astype(int) - 123).max() <= tol
    out_small = preprocess_batch(images, mask, PreprocessConfig(size=4, grayscale=True, impute_method=method))
    assert out_small.shape == (2, 4, 4, 1)
    assert np.abs(out_small.astype(int) - 123).max() <= tol


def test_preprocess_batch_without_holes_is_resize_and_channels():
    images, small = _blocky(2, 8, 8, 3, 2, seed=5)
    mask = np.zeros((2, 8, 8), dtype=bool)
    out = preprocess_batch(images, mask, PreprocessConfig(size=4, grayscale=True))
    np.testing.assert_array_equal(out, set_channels(small, grayscale=True))


# preprocess_shard ----------------------------------------------------------------------------

@pytest.fixture
def images_shard(tmp_path, png):
    """An images shard written by ingest_chunk: RGBA 8x8 with holes, blocky RGB 16x16, gray 4x4."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, size=(8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    hole = np.zeros((8, 8), dtype=bool)
    hole[2:4, 2:6] = True
    hole[7, 7] = True
    rgba[hole, 3] = 0
    big, small = _blocky(1, 16, 16, 3, 2, seed=4)
    gray = np.full((4, 4), 90, dtype=np.uint8)
    (src / "a_holes.png").write_bytes(png(rgba, "RGBA"))
    (src / "b_big.png").write_bytes(png(big[0]))
    (src / "c_gray.png").write_bytes(png(gray, "L"))
    paths = [str(src / n) for n in ("a_holes.png", "b_big.png", "c_gray.png")]
    root = str((tmp_path / "store").resolve())
    out = ingest_chunk(root, [(p, None if p.endswith("c_gray.png") else "lbl", p, None, None) for p in paths],
                       IngestConfig(val_fraction=0.1, test_fraction=0.2))
    assert out["quarantine"] == [] and len(out["shards"]) == 1
    entry = out["shards"][0]
    items = [{"image_id": i} for i in entry["image_ids"]]
    return {"root": root, "path": entry["path"], "items": items, "rgba": rgba, "hole": hole,
            "small": small[0], "gray": gray}


def test_preprocess_shard_rgb(images_shard):
    s = images_shard
    result = preprocess_shard(s["root"], s["path"], "datasets/pixels/out.parquet",
                              PreprocessConfig(size=8, impute_method="harmonic"))
    n_hole = int(s["hole"].sum())
    assert result["path"] == "datasets/pixels/out.parquet"
    assert result["num_rows"] == 3
    assert result["imputed_images"] == 1
    assert result["imputed_pixels"] == pytest.approx(n_hole / 64)

    table = pq.read_table(f"{s['root']}/datasets/pixels/out.parquet")
    assert table.schema.field("pixels").type == pa.binary(8 * 8 * 3)
    assert shape_of(table.schema) == (8, 8, 3)
    assert table.column("image_id").to_pylist() == [i["image_id"] for i in s["items"]]
    assert table.column("label").to_pylist() == ["lbl", "lbl", None]
    assert table.column("imputed_fraction").to_pylist() == pytest.approx([n_hole / 64, 0.0, 0.0])
    assert table.column("imputed_fraction").type == pa.float32()
    assert table.column("impute_method").to_pylist() == ["harmonic", None, None]
    images_split = pq.read_table(f"{s['root']}/{s['path']}").column("split").to_pylist()
    assert table.column("split").to_pylist() == images_split

    px = pixels_to_array(table.column("pixels"), (8, 8, 3))
    known = ~s["hole"]
    np.testing.assert_array_equal(px[0][known], s["rgba"][..., :3][known])  # no resize: known pixels exact
    np.testing.assert_array_equal(px[1], s["small"])                        # 16x16 blocks -> 8x8 exact
    assert (px[2] == 90).all()                                              # gray 4x4 -> 8x8 RGB


def test_preprocess_shard_grayscale(images_shard):
    s = images_shard
    result = preprocess_shard(s["root"], s["path"], "datasets/pixels/gray.parquet",
                              PreprocessConfig(size=4, grayscale=True, impute_method="mean"))
    assert (result["num_rows"], result["imputed_images"]) == (3, 1)
    table = pq.read_table(f"{s['root']}/datasets/pixels/gray.parquet")
    assert table.schema.field("pixels").type == pa.binary(16)
    assert shape_of(table.schema) == (4, 4, 1)
    assert table.column("impute_method").to_pylist() == ["mean", None, None]
    px = pixels_to_array(table.column("pixels"), (4, 4, 1))
    assert (px[2] == 90).all()


# fit, resample, stats ---------------------------------------------------------------------------

def test_resize_pad_keeps_aspect_and_centres():
    images = np.full((1, 8, 16, 3), 200, dtype=np.uint8)
    out = resize_images(images, 8, fit="pad")
    assert out.shape == (1, 8, 8, 3)
    assert (out[0, 2:6] == 200).all() and (out[0, :2] == 0).all() and (out[0, 6:] == 0).all()


def test_resize_crop_takes_the_centre():
    images = np.zeros((1, 4, 8, 1), dtype=np.uint8)
    images[0, :, 2:6] = 50
    out = resize_images(images, 4, fit="crop")
    assert out.shape == (1, 4, 4, 1) and (out == 50).all()


def test_resize_bilinear_differs_from_area_when_shrinking():
    images = np.random.default_rng(0).integers(0, 256, size=(1, 16, 16, 3), dtype=np.uint8)
    area, bilinear = resize_images(images, 5), resize_images(images, 5, resample="bilinear")
    assert area.shape == bilinear.shape == (1, 5, 5, 3) and not np.array_equal(area, bilinear)


def test_pixel_sums_and_channel_stats(images_shard):
    s = images_shard
    preprocess_shard(s["root"], s["path"], "datasets/pixels/out.parquet", PreprocessConfig(size=8))
    table = pq.read_table(f"{s['root']}/datasets/pixels/out.parquet")
    train = np.array(table.column("split").to_pylist()) == "train"
    px = pixels_to_array(table.column("pixels"), (8, 8, 3))[train].reshape(-1, 3).astype(np.float64)
    sums = pixel_sums(table)
    assert sums["count"] == px.shape[0]
    stats = channel_stats([sums, {"count": 0, "sum": [0, 0, 0], "sumsq": [0, 0, 0]}])
    if px.size:
        np.testing.assert_allclose(stats["mean"], px.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(stats["std"], np.maximum(px.std(axis=0), 1e-3), atol=1e-4)
