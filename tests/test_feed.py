"""Training feed: per-epoch order, flips, shifts, and the patch-whitening filters (numpy only)."""

import numpy as np
import pytest

from fusion_core.learning.feed import epoch_batches, epoch_steps, flip_mask, share_rows, translate, whitening_filters


def _images(n=40, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_whitening_filters_whiten_the_datas_patches():
    rng = np.random.default_rng(1)
    # correlated channels, so that whitening has something to undo
    base = rng.normal(128, 40, (200, 12, 12, 1))
    images = np.clip(np.concatenate([base, base * 0.8 + 20, base * 0.5 + 60], axis=-1)
                     + rng.normal(0, 8, (200, 12, 12, 3)), 0, 255).astype(np.uint8)
    filters = whitening_filters(images, None, eps=1e-8)
    assert filters.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(filters[..., 12:], -filters[..., :12])  # the negatives follow
    x = images.astype(np.float64) / 255
    patches = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    out = patches.reshape(-1, 12) @ filters[..., :12].reshape(12, 12)
    np.testing.assert_allclose(out.T @ out / len(out), np.eye(12), atol=1e-3)


def test_whitening_uses_the_models_input_scaling():
    images = _images(20)
    norm = {"mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 40.0]}
    assert not np.allclose(whitening_filters(images, norm), whitening_filters(images, None))


def test_translate_shifts_by_at_most_pad_with_reflected_edges():
    images = _images(30, 6)
    out = translate(images, 2, np.random.default_rng(0))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for i in range(len(images)):
        assert any(np.array_equal(out[i], padded[i, dy:dy + 6, dx:dx + 6]) for dy in range(5) for dx in range(5))
    assert not np.array_equal(out, images)
    np.testing.assert_array_equal(translate(images, 0, np.random.default_rng(0)), images)


def test_alternating_flips_invert_every_other_epoch():
    first, second, third = (flip_mask(100, "alternating", 7, epoch) for epoch in (0, 1, 2))
    np.testing.assert_array_equal(second, ~first)
    np.testing.assert_array_equal(third, first)
    assert 20 < first.sum() < 80
    assert not flip_mask(100, "none", 7, 0).any()
    assert not np.array_equal(flip_mask(100, "random", 7, 0), flip_mask(100, "random", 7, 2))
    with pytest.raises(ValueError, match="alternating"):
        flip_mask(3, "sometimes", 0, 0)


def test_an_epoch_visits_each_image_once_in_a_new_order():
    x, y = _images(103), np.arange(103)
    batches = list(epoch_batches(x, y, 10, seed=1, epoch=0))
    assert len(batches) == epoch_steps(103, 10) == 10  # the partial batch is dropped
    seen = np.concatenate([b[1] for b in batches])
    assert len(set(seen)) == 100 and not np.array_equal(seen, np.arange(100))
    for images, labels in batches:
        np.testing.assert_array_equal(images, x[labels])  # no flip or shift asked for
    again = np.concatenate([b[1] for b in epoch_batches(x, y, 10, seed=1, epoch=1)])
    assert not np.array_equal(again, seen)
    in_order = list(epoch_batches(x, y, 10, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in in_order]), y)  # evaluation keeps every image


def test_flips_and_shifts_apply_to_each_batch():
    x, y = _images(64), np.arange(64)
    mirrored = flip_mask(64, "alternating", 3, 1)
    for images, labels in epoch_batches(x, y, 16, seed=3, epoch=1, flip="alternating"):
        expected = np.where(mirrored[labels][:, None, None, None], x[labels][:, :, ::-1], x[labels])
        np.testing.assert_array_equal(images, expected)


def test_batches_are_grouped_without_mixing_lengths():
    from fusion_core.learning.feed import grouped

    x, y = _images(45), np.arange(45)
    groups = list(grouped(epoch_batches(x, y, 10, shuffle=False), size=2))
    assert [g[0].shape[:2] for g in groups] == [(2, 10), (2, 10), (1, 5)]  # the short last batch alone
    np.testing.assert_array_equal(np.concatenate([g[1].reshape(-1) for g in groups]), y)


@pytest.mark.parametrize("counts,workers", [([5, 3, 0, 7], 2), ([40, 1, 13, 9, 0, 22], 3), ([2], 3), ([], 2)])
def test_workers_get_equal_disjoint_shares_of_every_row_but_the_remainder(counts, workers):
    shares = share_rows(counts, workers, seed=7)
    assert len(shares) == workers
    sizes = [sum(stop - start for _, start, stop in share) for share in shares]
    assert sizes == [sum(counts) // workers] * workers
    rows = [(shard, row) for share in shares for shard, start, stop in share for row in range(start, stop)]
    assert len(set(rows)) == len(rows) and all(row < counts[shard] for shard, row in rows)
    assert share_rows(counts, workers, seed=7) == shares
