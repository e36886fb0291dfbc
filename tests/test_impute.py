"""Tests for fusion_core.imaging.impute."""

import logging

import numpy as np
import pytest

from fusion_core.imaging.corrupt import corrupt_blocks, corrupt_random
from fusion_core.imaging.impute import CHOICES, FALLBACK, impute, methods_used, pick_method, psnr


def _random_batch(seed=0, shape=(4, 16, 16, 3)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _smooth_image(n=2, h=32, w=32, c=3):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [
        127.5 + 100 * np.sin(xx / 5.0 + k) * np.cos(yy / 7.0 - k) for k in range(c)
    ]
    img = np.stack(chans, axis=-1)
    return np.repeat(img[None], n, axis=0).round().astype(np.uint8)


@pytest.mark.parametrize("method", CHOICES)
def test_constant_image_stays_constant(method):
    images = np.full((3, 16, 16, 3), 77, dtype=np.uint8)
    mask = corrupt_random((3, 16, 16), 0.4, seed=1)
    out = impute(images, mask, method)
    # OpenCV's Telea (a reference, not ours) adds a gradient term that drifts by up to 3 levels
    np.testing.assert_allclose(out, 77.0, rtol=0, atol=3.0 if method == "telea" else 1e-4)


@pytest.mark.parametrize("method", CHOICES)
def test_no_holes_changes_nothing(method):
    images = _random_batch()
    out = impute(images, np.zeros(images.shape[:3], bool), method)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, images.astype(np.float32))


@pytest.mark.parametrize("method", CHOICES)
def test_known_pixels_never_altered_and_shape_dtype(method):
    images = _random_batch(seed=3)
    mask = corrupt_random(images.shape[:3], 0.3, seed=4)
    out = impute(images, mask, method)
    assert out.shape == images.shape
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[~mask], images[~mask].astype(np.float32))
    # fills stay inside the range of the input
    assert out.min() >= 0.0 and out.max() <= 255.0


@pytest.mark.parametrize("method", CHOICES)
def test_batch_images_are_independent(method):
    images = _random_batch(seed=5, shape=(3, 12, 12, 2))
    mask = corrupt_random(images.shape[:3], 0.5, seed=6)
    batch = impute(images, mask, method)
    for i in range(len(images)):
        single = impute(images[i : i + 1], mask[i : i + 1], method)
        np.testing.assert_allclose(batch[i], single[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", CHOICES)
@pytest.mark.parametrize(
    "dtype, expected", [(np.uint8, 127.5), (np.float32, 0.5)]
)
def test_all_missing_image_gets_fallback(method, dtype, expected, caplog):
    images = _random_batch(seed=7, shape=(2, 8, 8, 3)).astype(dtype)
    mask = np.zeros((2, 8, 8), bool)
    mask[0] = True
    mask[1, 2:4, 2:4] = True
    with caplog.at_level(logging.WARNING, logger="fusion_core.imaging.impute"):
        out = impute(images, mask, method)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], np.float32(expected))
    np.testing.assert_array_equal(out[1][~mask[1]], images[1][~mask[1]].astype(np.float32))
    assert any("fully missing" in r.message for r in caplog.records)


def test_nearest_copies_a_neighbour_value():
    images = np.zeros((1, 3, 3, 1), np.uint8)
    images[0, 1, 0, 0] = 10
    images[0, 0, 1, 0] = 10
    images[0, 1, 2, 0] = 10
    images[0, 2, 1, 0] = 10
    images[0, 0, 0, 0] = 200  # diagonal: farther than the 4-neighbours
    mask = np.zeros((1, 3, 3), bool)
    mask[0, 1, 1] = True
    out = impute(images, mask, "nearest")
    assert out[0, 1, 1, 0] == 10.0


def test_mean_fill_is_per_image_per_channel_mean():
    images = _random_batch(seed=8, shape=(2, 6, 6, 3))
    mask = corrupt_random((2, 6, 6), 0.5, seed=9)
    out = impute(images, mask, "mean")
    for i in range(2):
        expected = images[i][~mask[i]].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(out[i][mask[i]], np.broadcast_to(expected, (mask[i].sum(), 3)), rtol=1e-6)


def test_harmonic_exact_on_linear_ramp():
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    ramp = 10 * xx + 3 * yy + 20
    images = np.stack([ramp, 2 * ramp, ramp + 5], axis=-1)[None].repeat(2, axis=0)
    mask = corrupt_random((2, 32, 32), 0.3, seed=10)
    mask[:, 0, :] = mask[:, -1, :] = mask[:, :, 0] = mask[:, :, -1] = False
    out = impute(images, mask, "harmonic")
    np.testing.assert_allclose(out, images, rtol=0, atol=0.05)


def test_harmonic_solves_laplace_on_large_hole():
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    images = (5 * xx - 2 * yy + 100)[None, ..., None]
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 4:28, 4:28] = True  # 24x24 hole
    out = impute(images, mask, "harmonic")
    np.testing.assert_allclose(out, images, rtol=0, atol=0.05)


def test_normalized_convolution_beats_mean_fill():
    images = _smooth_image()
    mask = corrupt_random(images.shape[:3], 0.3, seed=11)
    mask3 = np.broadcast_to(mask[..., None], images.shape)
    p_nc = psnr(images, impute(images, mask, "normalized_convolution"), mask3)
    p_mean = psnr(images, impute(images, mask, "mean"), mask3)
    assert p_nc > p_mean + 10.0


def test_biharmonic_exact_on_linear_ramp_away_from_edges():
    yy, xx = np.mgrid[0:24, 0:24].astype(np.float32)
    images = np.stack([4 * xx - 2 * yy + 90, 3 * yy + 10], axis=-1)[None]
    mask = corrupt_random((1, 24, 24), 0.4, seed=12)
    mask[:, :2, :] = mask[:, -2:, :] = mask[:, :, :2] = mask[:, :, -2:] = False
    out = impute(images, mask, "biharmonic")
    np.testing.assert_allclose(out, images, rtol=0, atol=1e-3)


def test_biharmonic_beats_harmonic_on_smooth_image():
    images = _smooth_image()
    mask = corrupt_random(images.shape[:3], 0.3, seed=13)
    mask3 = np.broadcast_to(mask[..., None], images.shape)
    assert psnr(images, impute(images, mask, "biharmonic"), mask3) > psnr(images, impute(images, mask, "harmonic"), mask3)


def test_auto_picks_biharmonic_for_scattered_and_harmonic_for_blocks():
    scattered = corrupt_random((2, 32, 32), 0.3, seed=14)
    blocks = corrupt_blocks((2, 32, 32), 2, 6, 10, seed=15)
    assert pick_method(np.concatenate([scattered, blocks])).tolist() == ["biharmonic"] * 2 + ["harmonic"] * 2
    images = _smooth_image(n=4)
    mask = np.concatenate([scattered, blocks])
    out = impute(images, mask)  # auto is the default
    np.testing.assert_array_equal(out[:2], impute(images[:2], mask[:2], "biharmonic"))
    np.testing.assert_array_equal(out[2:], impute(images[2:], mask[2:], "harmonic"))


def test_methods_used_records_fallback_and_no_holes():
    mask = np.zeros((3, 8, 8), bool)
    mask[0] = True
    mask[1, 3, 3] = True
    assert methods_used(mask) == [FALLBACK, "biharmonic", None]
    assert methods_used(mask, "telea") == [FALLBACK, "telea", None]


@pytest.mark.parametrize("method", ["telea", "navier_stokes"])
def test_opencv_methods_on_float_and_multichannel_input(method):
    images = np.full((2, 10, 10, 2), 0.25, dtype=np.float32)
    mask = corrupt_random((2, 10, 10), 0.3, seed=16)
    out = impute(images, mask, method)
    np.testing.assert_array_equal(out[~mask], 0.25)
    np.testing.assert_allclose(out, 0.25, rtol=0, atol=0.02 if method == "telea" else 1e-6)


def test_unknown_method_raises():
    images = _random_batch()
    mask = corrupt_random(images.shape[:3], 0.1, seed=0)
    with pytest.raises(ValueError, match="bogus") as exc:
        impute(images, mask, "bogus")
    for name in CHOICES:
        assert name in str(exc.value)


def test_psnr_values():
    ref = np.zeros((1, 4, 4, 1))
    est = ref.copy()
    assert psnr(ref, est) == float("inf")
    est[0, 0, 0, 0] = 255.0
    mask = np.zeros_like(ref, bool)
    mask[0, 0, 0, 0] = True
    assert psnr(ref, est, mask) == pytest.approx(0.0)
    assert psnr(ref, est) == pytest.approx(10 * np.log10(16))
