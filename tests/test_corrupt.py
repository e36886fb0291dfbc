"""Tests for fusion_core.imaging.corrupt."""

import numpy as np
import pytest

from fusion_core.imaging.corrupt import (PATTERNS, corrupt_blocks, corrupt_lines, corrupt_pattern, corrupt_random,
                                         corrupt_salt_pepper)


def test_corrupt_random_fraction_and_reproducible():
    a = corrupt_random((5, 20, 10), 0.3, seed=42)
    b = corrupt_random((5, 20, 10), 0.3, seed=42)
    c = corrupt_random((5, 20, 10), 0.3, seed=43)
    assert a.dtype == bool and a.shape == (5, 20, 10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a.sum(axis=(1, 2)), 60)


def test_corrupt_lines_kills_whole_rows_and_columns():
    m = corrupt_lines((3, 16, 12), 2, 1, seed=0)
    for img in m:
        assert img.all(axis=1).sum() == 2 and img.all(axis=0).sum() == 1
        assert img.sum() == 2 * 12 + 16 - 2


def test_corrupt_blocks_are_rectangles_within_sizes():
    m = corrupt_blocks((20, 32, 32), 1, 4, 8, seed=1)
    for img in m:
        ys, xs = np.nonzero(img)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert 4 <= h <= 8 and 4 <= w <= 8 and img.sum() == h * w


def test_corrupt_salt_pepper_specks_are_small():
    m = corrupt_salt_pepper((4, 32, 32), 0.02, 1, seed=2)
    assert 0 < m.mean() < 0.05
    assert corrupt_salt_pepper((4, 32, 32), 0.02, 3, seed=2).sum() > m.sum()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_is_reproducible_and_partial(pattern):
    a, b = corrupt_pattern(pattern, (8, 32, 32), 5), corrupt_pattern(pattern, (8, 32, 32), 5)
    np.testing.assert_array_equal(a, b)
    assert a.any(axis=(1, 2)).all() and not a.all(axis=(1, 2)).any()


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        corrupt_random((1, 4, 4), 1.5, 0)
    with pytest.raises(ValueError, match="unknown mask pattern"):
        corrupt_pattern("swirl", (1, 4, 4), 0)
