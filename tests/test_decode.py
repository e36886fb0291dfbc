"""Tests for decoding image bytes (fusion_core.data.decode): formats, orientation, masks, truncation, limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import encode_image, gradient_rgb, random_rgb, rgba_with_hole
from fusion_core.data.decode import QuarantineError, decode_image

MAX = 10_000_000


def _reason(data: bytes, max_pixels: int = MAX) -> str:
    with pytest.raises(QuarantineError) as info:
        decode_image(data, max_pixels)
    return info.value.reason


# decode_image -----------------------------------------------------------------------

def test_decode_rgb_png_exact():
    rgb = random_rgb()
    pixels, mask = decode_image(encode_image(Image.fromarray(rgb)), MAX)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (5, 7, 3)
    np.testing.assert_array_equal(pixels, rgb)
    assert mask is None


def test_decode_rgba_png_mask_exactly_on_transparent_pixels():
    rgba, hole = rgba_with_hole()
    pixels, mask = decode_image(encode_image(Image.fromarray(rgba, "RGBA")), MAX)
    assert pixels.shape == (6, 8, 3)
    np.testing.assert_array_equal(pixels, rgba[..., :3])
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, hole)


def test_decode_opaque_rgba_has_no_mask():
    rgba = np.full((3, 3, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 255
    pixels, mask = decode_image(encode_image(Image.fromarray(rgba, "RGBA")), MAX)
    assert pixels.shape == (3, 3, 3)
    assert mask is None


def test_decode_la_png_is_single_channel_with_mask():
    la = np.zeros((4, 4, 2), dtype=np.uint8)
    la[..., 0] = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    la[..., 1] = 255
    la[0, 0, 1] = 0
    pixels, mask = decode_image(encode_image(Image.fromarray(la, "LA")), MAX)
    assert pixels.shape == (4, 4, 1)
    np.testing.assert_array_equal(pixels[..., 0], la[..., 0])
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 0] = True
    np.testing.assert_array_equal(mask, expected)


def test_decode_grayscale_png():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    pixels, mask = decode_image(encode_image(Image.fromarray(gray, "L")), MAX)
    assert pixels.shape == (3, 4, 1)
    np.testing.assert_array_equal(pixels[..., 0], gray)
    assert mask is None


def test_decode_16bit_grayscale_png_scaled_to_uint8():
    raw = np.array([[0, 257, 65535], [32768, 1000, 60000]], dtype=np.uint16)
    img = Image.fromarray(raw)
    assert img.mode == "I;16"
    data = encode_image(img)
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
    data = encode_image(img)
    assert Image.open(io.BytesIO(data)).mode == "P"
    pixels, mask = decode_image(data, MAX)
    assert pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(pixels, rgb)
    assert mask is None


def test_decode_palette_png_with_transparency_gives_mask():
    img = Image.new("P", (3, 2), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.putpixel((2, 0), 0)
    data = encode_image(img, transparency=0)
    pixels, mask = decode_image(data, MAX)
    assert pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(pixels[1, 1], [10, 20, 30])
    np.testing.assert_array_equal(mask, [[False, False, True], [False, False, False]])


def test_decode_jpeg_applies_exif_orientation():
    rgb = random_rgb(4, 6, seed=2)
    plain = encode_image(Image.fromarray(rgb), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = encode_image(Image.fromarray(rgb), "JPEG", quality=95, exif=exif)
    plain_px, plain_mask = decode_image(plain, MAX)
    rot_px, rot_mask = decode_image(rotated, MAX)
    assert plain_px.shape == (4, 6, 3)
    assert rot_px.shape == (6, 4, 3)
    np.testing.assert_array_equal(rot_px, np.rot90(plain_px, k=-1))
    assert plain_mask is None and rot_mask is None


def test_decode_jpeg_with_exif_and_gps_gives_pixels_only():
    rgb = random_rgb(5, 3, seed=3)
    exif = Image.Exif()
    exif[0x010F] = "ACME Camera"          # Make
    exif[0x0112] = 1                      # Orientation: normal
    exif.get_ifd(0x8825)[2] = (52.0, 22.0, 12.0)   # GPSLatitude
    exif.get_ifd(0x8825)[1] = "N"                  # GPSLatitudeRef
    data = encode_image(Image.fromarray(rgb), "JPEG", quality=95, exif=exif)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)
    plain_px, _ = decode_image(encode_image(Image.fromarray(rgb), "JPEG", quality=95), MAX)
    result = decode_image(data, MAX)
    assert isinstance(result, tuple) and len(result) == 2
    pixels, mask = result
    assert isinstance(pixels, np.ndarray) and pixels.shape == (5, 3, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, plain_px)
    assert mask is None


def test_decode_ignores_file_extension(tmp_path):
    rgb = random_rgb(3, 3, seed=4)
    path = tmp_path / "actually_png.jpg"
    path.write_bytes(encode_image(Image.fromarray(rgb), "PNG"))
    pixels, _ = decode_image(path.read_bytes(), MAX)
    np.testing.assert_array_equal(pixels, rgb)


def test_decode_errors_have_reasons():
    png = encode_image(Image.fromarray(random_rgb(32, 32, seed=5)))
    assert _reason(b"") == "empty_file"
    assert _reason(b"not an image") == "not_an_image"
    assert _reason(b"\x89PNG\r\n\x1a\n" + b"\0" * 40) in ("truncated", "decode_error")
    assert _reason(png, max_pixels=32 * 32 - 1) == "too_many_pixels"
    pixels, _ = decode_image(png, max_pixels=32 * 32)
    assert pixels.shape == (32, 32, 3)


def test_quarantine_error_message():
    with pytest.raises(QuarantineError, match=r"8x4 exceeds ingest.max_pixels=10"):
        decode_image(encode_image(Image.fromarray(random_rgb(4, 8))), 10)


# more formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                                     ("WEBP", {"lossless": True}), ("GIF", {})])
def test_decode_lossless_formats_exact(fmt, kw):
    rgb = gradient_rgb()
    img = Image.fromarray(rgb)
    if fmt == "GIF":  # palette format: keep to a few colours so the palette is exact
        rgb = (rgb // 64 * 64).astype(np.uint8)
        img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pixels, mask = decode_image(encode_image(img, fmt, **kw), MAX)
    np.testing.assert_array_equal(pixels, rgb)
    assert mask is None


def test_decode_gif_first_frame_of_animation():
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)).convert("P") for v in (0, 255)]
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    pixels, _ = decode_image(data, MAX)
    assert (pixels == 0).all()


def test_decode_16bit_tiff_and_rgba_webp():
    raw = np.array([[0, 65535], [257, 32768]], dtype=np.uint16)
    pixels, _ = decode_image(encode_image(Image.fromarray(raw), "TIFF"), MAX)
    np.testing.assert_array_equal(pixels[..., 0], [[0, 255], [1, 128]])
    rgba, hole = rgba_with_hole()
    pixels, mask = decode_image(encode_image(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True), MAX)
    np.testing.assert_array_equal(mask, hole)
    np.testing.assert_array_equal(pixels[~hole], rgba[..., :3][~hole])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation):
    rgb = gradient_rgb(8, 16)  # JPEG blocks align, so the rotation is exact
    exif = Image.Exif()
    exif[0x0112] = orientation
    plain, _ = decode_image(encode_image(Image.fromarray(rgb), "JPEG", quality=95), MAX)
    pixels, _ = decode_image(encode_image(Image.fromarray(rgb), "JPEG", quality=95, exif=exif), MAX)
    expected = {1: plain, 2: plain[:, ::-1], 3: plain[::-1, ::-1], 4: plain[::-1],
                5: plain.transpose(1, 0, 2), 6: np.rot90(plain, -1), 7: np.rot90(plain[::-1], 1),
                8: np.rot90(plain, 1)}[orientation]
    np.testing.assert_array_equal(pixels, expected)


def test_jpeg_fast_path_gives_pillows_pixels():
    from fusion_core.data.decode import _decode_with_pillow

    rgb = gradient_rgb(40, 56)
    gray = rgb[..., 0]
    for img, kw in ((Image.fromarray(rgb), {"quality": 90}), (Image.fromarray(rgb), {"subsampling": 0}),
                    (Image.fromarray(rgb), {"progressive": True}), (Image.fromarray(rgb), {"restart_marker_blocks": 1}),
                    (Image.fromarray(gray), {})):
        data = encode_image(img, "JPEG", **kw)
        np.testing.assert_array_equal(decode_image(data, MAX)[0], _decode_with_pillow(data, MAX)[0])


# missing pixels and limits -------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "TIFF"])
def test_truncated_file_keeps_decoded_rows_and_masks_the_rest(fmt):
    rgb = gradient_rgb(64, 48)
    img = Image.fromarray(rgb) if fmt != "GIF" else Image.fromarray(rgb // 64 * 64).convert("P", colors=64)
    data = encode_image(img, fmt)
    full, _ = decode_image(data, MAX)
    pixels, mask = decode_image(data[: int(len(data) * 0.7)], MAX)
    assert mask is not None and 0 < mask.sum() < mask.size
    first, last = (0, -1) if fmt != "BMP" else (-1, 0)  # BMP stores the bottom row first
    assert mask[last].all() and not mask[first].any()  # the end of the file is lost, the start is kept
    np.testing.assert_array_equal(pixels[~mask], full[~mask])


def test_truncated_baseline_jpeg_masks_from_the_first_lost_block():
    data = encode_image(Image.fromarray(gradient_rgb(64, 48)), "JPEG", quality=90)
    full, _ = decode_image(data, MAX)
    pixels, mask = decode_image(data[: int(len(data) * 0.9)], MAX)
    assert 0 < mask.sum() < mask.size and mask[-1].all() and not mask[0].any()
    np.testing.assert_array_equal(pixels[~mask], full[~mask])


def test_truncated_beyond_use():
    png = encode_image(Image.fromarray(gradient_rgb()))
    jpeg = encode_image(Image.fromarray(gradient_rgb()), "JPEG", progressive=True)
    assert _reason(png[:40]) == "truncated"        # header only
    assert _reason(png[:12]) == "truncated"        # not even a header
    assert _reason(jpeg[: len(jpeg) - 50]) == "truncated"  # progressive: no pixel is final


def test_explicit_mask_is_merged_with_alpha_and_checked():
    rgba, hole = rgba_with_hole()
    extra = np.zeros(hole.shape, np.uint8)
    extra[0, 0] = 1
    pixels, mask = decode_image(encode_image(Image.fromarray(rgba, "RGBA")), MAX, encode_image(Image.fromarray(extra, "L")))
    np.testing.assert_array_equal(mask, hole | (extra > 0))
    with pytest.raises(QuarantineError) as info:
        decode_image(encode_image(Image.fromarray(rgba, "RGBA")), MAX, encode_image(Image.fromarray(extra[:2], "L")))
    assert info.value.reason == "bad_mask"


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode_image(Image.new("1", (12_000, 12_000)), "PNG")  # 144 Mpx in a few hundred kB
    assert len(bomb) < 1_000_000
    assert _reason(bomb, max_pixels=50_000_000) == "too_many_pixels"
    assert _reason(bomb, max_pixels=200_000_000) == "too_many_pixels"  # Pillow's own bomb limit
    big = encode_image(Image.fromarray(gradient_rgb(64, 64)), "JPEG")
    assert _reason(big, max_pixels=64 * 64 - 1) == "too_many_pixels"  # the JPEG fast path checks too
