"""Image quality flags on planted images: dark, light, flat, blurred, grey, oddly sized, among textured colour."""

import numpy as np
import pyarrow as pa
import pytest

from fusion_core.config import MineConfig
from fusion_core.imaging.quality import image_stats, quality_flags, thumbnail_distance, thumbnails


def _images(arrays: list[np.ndarray]) -> pa.Table:
    return pa.table({"image_id": [f"img{i}" for i in range(len(arrays))],
                     "height": pa.array([a.shape[0] for a in arrays], pa.int32()),
                     "width": pa.array([a.shape[1] for a in arrays], pa.int32()),
                     "channels": pa.array([a.shape[2] for a in arrays], pa.int8()),
                     "pixels": [a.tobytes() for a in arrays]})


def test_each_planted_problem_raises_its_flag_and_good_images_none():
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(10)]
    yy, xx = np.mgrid[:32, :32]
    smooth = np.stack([128 + 60 * np.sin(xx / 6 + k) * np.cos(yy / 7 - k) for k in range(3)], axis=2).astype(np.uint8)
    planted = {
        "dark": good[0] // 6,
        "light": 255 - good[1] // 8,
        "near_constant,low_information,blurry,grey": np.full((32, 32, 3), 120, np.uint8),
        "blurry": smooth,
        "grey": np.repeat(good[2][:, :, :1], 3, axis=2),
        "odd_size": rng.integers(0, 256, (32, 100, 3), dtype=np.uint8),
    }
    stats = image_stats(_images(good + list(planted.values())))
    flags = quality_flags(stats, MineConfig().quality)
    assert flags[:10] == [None] * 10
    assert {name: flag for name, flag in zip(planted, flags[10:])} == {name: name for name in planted}
    assert stats.num_rows == 16 and stats.column("width").to_pylist()[-1] == 100


def test_grey_is_flagged_only_in_a_colour_collection():
    rng = np.random.default_rng(1)
    grey = [np.repeat(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8), 3, axis=2) for _ in range(5)]
    assert quality_flags(image_stats(_images(grey)), MineConfig().quality) == [None] * 5
    assert quality_flags(image_stats(_images([])), MineConfig().quality) == []


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 9, 4)])
def test_tiny_and_alpha_images_have_statistics(shape):
    stats = image_stats(_images([np.zeros(shape, np.uint8)])).to_pylist()[0]
    assert stats["sharpness"] == 0.0 and stats["brightness"] == 0.0


def test_thumbnails_tell_a_re_encoded_copy_from_the_same_pattern_in_other_colours():
    yy, xx = np.mgrid[:32, :32]
    checks = ((yy // 8 + xx // 8) % 2).astype(bool)[:, :, None]
    red_on_blue = np.where(checks, [200, 60, 30], [30, 30, 120]).astype(np.uint8)
    green_on_grey = np.where(checks, [60, 220, 60], [90, 60, 60]).astype(np.uint8)
    copy = np.clip(red_on_blue.astype(int) + 4, 0, 255).astype(np.uint8)
    stats = image_stats(_images([red_on_blue, copy, green_on_grey, np.zeros((5, 7, 1), np.uint8)]))
    thumbs = thumbnails(stats.column("thumb"))
    assert thumbs.shape == (4, 192)
    hashes = stats.column("phash").to_pylist()
    assert hashes[0] == hashes[1] == hashes[2] != 0  # the grey hash cannot tell the colours apart
    distance = thumbnail_distance(thumbs[[0, 0]], thumbs[[1, 2]])
    assert distance[0] <= MineConfig().copy_distance < distance[1]
