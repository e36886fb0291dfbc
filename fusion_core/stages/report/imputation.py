"""The report's imputation section: images with missing pixels, spread over labels, beside the model inputs
made from them."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from fusion_core.stages.report.page import html_image
from fusion_core.stages.report.plots import plot_imputation_examples
from fusion_core.stages.report.sections import Section, pixels_by_id
from fusion_core.store import Store
from fusion_core.store.datasets import read_shard, unpack_mask

IMPUTATION_EXAMPLES = 6


def imputation(store: Store, pixels: dict | None) -> Section:
    """Images with missing pixels beside the model inputs made from them.

    Args:
        pixels: the run's pixels dataset version, or None.
    """
    title = "Imputation examples"
    if pixels is None:
        return Section(title, None)
    images = store.get_version("images", pixels["info"].get("images_version"))
    if images is None:
        return Section(title, '<p class="missing">The images behind this pixels version are no longer in the '
                              'catalog.</p>')
    rows = _spread_over_labels(store, images["shards"])
    note = (f"<p class=\"note\">Images with missing pixels (images v{images['version']}) and the model inputs "
            f"made from them (pixels v{pixels['version']}): imputed at the source resolution, then resized.</p>")
    if not rows:
        return Section(title, note + "<p>No image in this data had missing pixels.</p>")
    imputed = pixels_by_id(store, pixels, [r["image_id"] for r in rows])
    examples = []
    for r in rows:
        if r["image_id"] not in imputed:
            continue
        raw = np.frombuffer(r["pixels"], dtype=np.uint8).reshape(r["height"], r["width"], r["channels"])
        mask = unpack_mask(r["mask"], r["height"], r["width"])
        examples.append({"raw": raw, "mask": mask, "imputed": imputed[r["image_id"]],
                         "title": f"{r['label'] or 'unlabelled'}\n{r['image_id'][:10]}\n{mask.mean():.0%} missing"})
    return Section(title, note + html_image("imputation.png", "imputation examples: before, mask, after"),
                   {"imputation.png": plot_imputation_examples(examples)})


def _spread_over_labels(store: Store, shards: list[dict], scanned: int = 8) -> list[dict]:
    """Up to ``IMPUTATION_EXAMPLES`` images with missing pixels, one label after another (read from at most
    ``scanned`` shards, enough once every label has one)."""
    by_label: dict[str | None, list[dict]] = {}
    for shard in shards[:scanned]:
        table = read_shard(store.root, shard["path"],
                           ["image_id", "label", "height", "width", "channels", "pixels", "mask"],
                           pc.field("mask").is_valid())
        for row in table.slice(0, 50 * IMPUTATION_EXAMPLES).to_pylist():
            kept = by_label.setdefault(row["label"], [])
            if len(kept) < IMPUTATION_EXAMPLES:
                kept.append(row)
        if len(by_label) >= IMPUTATION_EXAMPLES:
            break
    rounds = zip(*[rows + [None] * (IMPUTATION_EXAMPLES - len(rows)) for rows in by_label.values()])
    return [row for one_each in rounds for row in one_each if row is not None][:IMPUTATION_EXAMPLES]
