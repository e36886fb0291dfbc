"""The gallery beside a run's report: pages of captioned thumbnails people browse.

One group per kind of finding (duplicate sets, leaks, likely label errors, outliers, poor images), per
off-diagonal cell of the holdout confusion matrix, and per cluster; each group in pages of ``PAGE_SIZE``
thumbnails, at most ``GROUP_MAX`` per group (the first, most certain ones: the command under each group lists
them all). Thumbnails are PNG files (the model-input pixels), one per image, so no page grows with the
collection. Everything lies under ``reports/<run id>/gallery/``; ``index.html`` lists the groups.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fusion_core import uri
from fusion_core.stages.report.page import CSS, SCRIPT
from fusion_core.stages.report.plots import as_rgb
from fusion_core.stages.report.sections import pixels_by_id
from fusion_core.store import Store

PAGE_SIZE = 100
GROUP_MAX = 500
GALLERY_DIR = "gallery"
FINDING_GROUPS = {"duplicate": ("Near-duplicate sets", "fusion find duplicates"),
                  "leak": ("Duplicates across train and holdout", "fusion find leaks"),
                  "label_error": ("Likely label errors", "fusion find label-errors"),
                  "outlier": ("Outliers", "fusion find outliers"),
                  "quality": ("Poor images", "fusion find quality")}


@dataclass
class Group:
    """A set of images shown together: ``rows`` hold ``image_id`` and caption fields."""

    slug: str
    title: str
    command: str
    rows: list[dict]


def write_gallery(store: Store, run_id: str, outputs: dict, predictions: dict | None) -> str | None:
    """Write the gallery of a run from its stages' ``outputs`` and the predictions version it shows; returns
    the index page's path relative to the report folder (None: no predictions, nothing to show)."""
    if predictions is None:
        return None
    table_run = (outputs.get("infer") or {}).get("table_run_id") or predictions["run_id"]
    groups = [*_finding_groups(store, run_id, outputs.get("mine")),
              *_confusion_groups(store, predictions, table_run),
              *_cluster_groups(store, run_id, outputs.get("cluster"), table_run)]
    folder = store.path("reports", run_id, GALLERY_DIR)
    shown = {r["image_id"] for g in groups for r in g.rows}
    _write_thumbnails(store, folder, store.get_version("pixels", predictions["info"]["pixels_version"]), shown)
    paths = store.sources_of(shown)
    for group in groups:
        pages = [group.rows[i:i + PAGE_SIZE] for i in range(0, len(group.rows), PAGE_SIZE)]
        for number, rows in enumerate(pages, start=1):
            uri.write_bytes(uri.join(folder, _page_name(group.slug, number)),
                            _page(group, number, len(pages), rows, paths).encode())
    uri.write_bytes(uri.join(folder, "index.html"), _index(run_id, groups).encode())
    return f"{GALLERY_DIR}/index.html"


def _finding_groups(store: Store, run_id: str, mine: dict | None) -> Iterable[Group]:
    """One group per kind of finding of the run's mine stage, most certain first (duplicates by set)."""
    if mine is None:
        return
    table_run = mine.get("table_run_id") or run_id
    for kind, (title, command) in FINDING_GROUPS.items():
        order = ("duplicate_set", "-score", "image_id") if kind in ("duplicate", "leak") else ("-score", "image_id")
        rows = store.select_results("findings", table_run, equal={"kind": kind}, order_by=order, limit=GROUP_MAX)
        captions = [{"image_id": r["image_id"], "label": r["label"], "score": r["score"],
                     "note": _finding_note(kind, r)} for r in rows]
        if captions:
            yield Group(kind.replace("_", "-"), title, command, captions)


def _finding_note(kind: str, row: dict) -> str | None:
    """What a finding's caption adds: the suggested label, the quality flags or the duplicate set."""
    if kind == "label_error":
        return f"suggested {row['suggested']}"
    if kind == "quality":
        return row["flags"]
    return None if row["duplicate_set"] is None else f"set {row['duplicate_set']}"


def _confusion_groups(store: Store, predictions: dict, table_run: str) -> Iterable[Group]:
    """The holdout's misclassified images, one group per (given, predicted) pair, most confident first."""
    model = store.get_model(predictions["info"]["model_version"])
    classes = list((model["metrics"].get("per_class_f1") or {}))
    matrix = model["metrics"].get("confusion_matrix") or []
    for i, given in enumerate(classes):
        for j, predicted in enumerate(classes):
            if i == j or i >= len(matrix) or not matrix[i][j]:
                continue
            rows = store.select_results("predictions", table_run,
                                        equal={"label": given, "predicted": predicted, "split": "test"},
                                        order_by=("-confidence", "image_id"), limit=GROUP_MAX)
            if rows:
                yield Group(f"confusion-{i}-{j}", f"Holdout images of {given} predicted {predicted}",
                            f"fusion predictions --label {given}",
                            [{"image_id": r["image_id"], "label": given, "score": r["confidence"],
                              "note": f"predicted {predicted}"} for r in rows])


def _cluster_groups(store: Store, run_id: str, cluster: dict | None, table_run: str) -> Iterable[Group]:
    """Each cluster's members, nearest the centre first, with their labels and predictions."""
    if cluster is None:
        return
    cluster_run = cluster.get("table_run_id") or run_id
    for summary in store.select_results("cluster_summaries", cluster_run, order_by=("cluster",)):
        members = store.select_results("cluster_assignments", cluster_run, equal={"cluster": summary["cluster"]},
                                       order_by=("distance", "image_id"), limit=GROUP_MAX)
        if not members:
            continue
        predictions = store.results_by_image("predictions", table_run, (m["image_id"] for m in members))
        rows = []
        for member in members:
            prediction = predictions.get(member["image_id"]) or {}
            rows.append({"image_id": member["image_id"], "label": prediction.get("label"), "score": member["distance"],
                         "note": f"predicted {prediction.get('predicted')}"})
        title = (f"Cluster {summary['cluster']} ({summary['size']} images, "
                 f"mostly {summary['top_label'] or 'unlabelled'})")
        yield Group(f"cluster-{summary['cluster']}", title, f"fusion clusters --cluster {summary['cluster']}", rows)


def group_page(slug: str) -> str:
    """The first page of a group, relative to the report's folder."""
    return f"{GALLERY_DIR}/{_page_name(slug, 1)}"


def thumbnail_png(image: np.ndarray) -> bytes:
    """A thumbnail of one model-input image, as PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(as_rgb(image)).save(out, format="PNG")
    return out.getvalue()


def figure_html(src: str, href: str, caption: Sequence) -> str:
    """A thumbnail linked to ``href`` with its caption (empty parts left out), one line per part."""
    text = "<br>".join(html.escape(str(c)) for c in caption if c)
    return (f'<figure><a href="{html.escape(href)}"><img src="{html.escape(src)}" alt="{html.escape(str(caption[0]))}">'
            f"</a><figcaption>{text}</figcaption></figure>")


def _write_thumbnails(store: Store, folder: str, pixels: dict, image_ids: set[str]) -> None:
    """One PNG per image, from the model-input pixels, read in one pass over the pixels shards."""
    for image_id, image in pixels_by_id(store, pixels, sorted(image_ids)).items():
        uri.write_bytes(uri.join(folder, "thumbs", f"{image_id}.png"), thumbnail_png(image))


def _page_name(slug: str, number: int) -> str:
    return f"{slug}-{number}.html"


def _page(group: Group, number: int, pages: int, rows: list[dict], paths: dict[str, list[str]]) -> str:
    """One page of a group: its thumbnails, captioned and linked to the image, with links to the other pages."""
    nav = ['<a href="index.html">all groups</a>', "<a href=\"../index.html\">report</a>"]
    if number > 1:
        nav.append(f'<a href="{_page_name(group.slug, number - 1)}">previous</a>')
    if number < pages:
        nav.append(f'<a href="{_page_name(group.slug, number + 1)}">next</a>')
    figures = "".join(_figure(r, (paths.get(r["image_id"]) or [None])[0]) for r in rows)
    title = f"{group.title}, page {number} of {pages}"
    return _document(title, f"<nav>{' '.join(nav)}</nav><p class=\"note\">all of them: <code>"
                            f"{html.escape(group.command)}</code></p><div class=\"grid\">{figures}</div>")


def _figure(row: dict, path: str | None) -> str:
    thumb = f"thumbs/{row['image_id']}.png"
    return figure_html(thumb, thumb, [row["image_id"][:12], row["label"] or "unlabelled", row.get("note"),
                                      None if row["score"] is None else f"score {row['score']:.3f}", path])


def _index(run_id: str, groups: list[Group]) -> str:
    items = "".join(f'<li><a href="{_page_name(g.slug, 1)}">{html.escape(g.title)}</a> ({len(g.rows)}'
                    f'{"+" if len(g.rows) == GROUP_MAX else ""} images)</li>' for g in groups)
    return _document(f"Gallery of run {run_id}", '<nav><a href="../index.html">report</a></nav>'
                     + (f"<ul>{items}</ul>" if items else "<p>Nothing to show in this run.</p>"))


def _document(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
            f"{body}</body></html>")
