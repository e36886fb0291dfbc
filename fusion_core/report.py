"""Report: a self-contained HTML page (plus PNGs) of what one run did, under ``<store root>/reports/<run id>/``.

Sections follow the stages: run summary, ingestion and quarantine, imputation
examples, training curves, holdout evaluation, an embedding map and cluster
exemplars. A section whose stage is not part of the run says so. Stages that
reused earlier results (a rerun) are shown with those results. Plots are drawn
with matplotlib's Agg canvas, imported only when a plot is drawn.
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import sqlalchemy as sa

from fusion_core.config import Settings
from fusion_core.datasets import fixed_list_to_array, pixels_to_array, shape_of
from fusion_core.ingest import unpack_mask
from fusion_core.runs import StageResult
from fusion_core.store import Store, dataset_shards, dataset_versions

log = logging.getLogger(__name__)

REPORT_DIR = "reports"
HOLE_COLOUR = (255, 0, 255)  # magenta: missing pixels in the "before" images
IMPUTATION_EXAMPLES = 6
MAP_POINTS = 5000
EXEMPLARS_PER_CLUSTER = 8
QUARANTINE_ROWS_SHOWN = 20

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
     color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav{margin:.5em 0 1.5em} nav a{margin-right:1em;color:#0645ad}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.92em;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6em 0;border:1px solid #eee}
.missing{color:#888;font-style:italic} .note{color:#555;font-size:.92em}
"""
# Sets data-images-loaded / data-images-total on <body> once every image has loaded or failed.
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].naturalWidth > 0) loaded++; }
  document.body.dataset.imagesLoaded = loaded;
  document.body.dataset.imagesTotal = images.length;
});
"""


# plots ----------------------------------------------------------------------
def _figure(width: float, height: float):
    """A figure on an Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) view of a (H, W), (H, W, 1) or (H, W, 3) image."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def show_holes(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image as RGB with its missing pixels painted magenta."""
    out = as_rgb(pixels).copy()
    out[mask] = HOLE_COLOUR
    return out


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` projected on their first two principal components, shape (N, 2).

    Components are signed so that each one's largest loading is positive (a stable picture).
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    xy = centred @ (components * signs[:, None]).T
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def plot_training_curves(history: Sequence[dict]) -> bytes:
    """Loss and accuracy per epoch, training and validation, as PNG bytes."""
    fig = _figure(10, 3.6)
    epochs = [h["epoch"] + 1 for h in history]
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, name in ((metric, "training"), (f"val_{metric}", "validation")):
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=name)
        ax.set(title=metric, xlabel="epoch")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    """Heatmap of a confusion matrix (rows true, columns predicted), shaded by row share, counts written in."""
    cm = np.asarray(matrix, dtype=np.int64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.55 * len(classes)
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=classes)
    ax.set(xlabel="predicted", ylabel="true", title="holdout confusion matrix")
    if len(classes) <= 25:
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _png(fig)


def plot_imputation_examples(examples: Sequence[dict]) -> bytes:
    """One row per example: before (holes magenta), the mask, after imputation.

    Args:
        examples: dicts with ``raw`` (H, W, C) uint8, ``mask`` (H, W) bool, ``imputed`` uint8 image and ``title``.
    """
    fig = _figure(6.5, 0.4 + 1.8 * len(examples))
    axes = fig.subplots(len(examples), 3, squeeze=False)
    for name, ax in zip(("before (missing in magenta)", "missing-pixel mask", "after imputation"), axes[0]):
        ax.set_title(name, fontsize=9)
    for row, example in zip(axes, examples):
        panels = ((show_holes(example["raw"], example["mask"]), {}),
                  (example["mask"], {"cmap": "gray", "vmin": 0, "vmax": 1}),
                  (as_rgb(example["imputed"]), {}))
        for ax, (image, style) in zip(row, panels):
            ax.imshow(image, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(example["title"], fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _png(fig)


def plot_embedding_map(xy: np.ndarray, labels: Sequence[str], clusters: np.ndarray | None = None) -> bytes:
    """2-D map of embeddings coloured by label and, when given, by cluster (-1, noise, in grey)."""
    panels = [("by label", [str(v) for v in labels])]
    if clusters is not None:
        panels.insert(0, ("by cluster", [("noise" if c < 0 else f"cluster {c}") for c in np.asarray(clusters)]))
    fig = _figure(6.2 * len(panels), 6.4)
    for ax, (title, values) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        names = sorted(set(values), key=_natural)
        colours = dict(zip([n for n in names if n != "noise"], _palette(len(names))))
        colours["noise"] = (0.6, 0.6, 0.6, 1.0)
        values = np.asarray(values, dtype=object)
        size = 12 if len(xy) <= 1000 else 5
        for name in names:
            keep = values == name
            ax.scatter(xy[keep, 0], xy[keep, 1], s=size, alpha=0.7, color=colours[name], label=name, linewidths=0)
        ax.set(title=f"embeddings (PCA), {title}", xlabel="PC 1", ylabel="PC 2")
        ax.legend(fontsize=7, markerscale=2.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
    fig.tight_layout()
    return _png(fig)


def plot_cluster_montage(rows: Sequence[tuple[str, Sequence[np.ndarray]]]) -> bytes:
    """A grid with one row per cluster: its caption, then its exemplar images."""
    width = max([len(images) for _, images in rows] + [1])
    fig = _figure(2.2 + 1.1 * width, 1.15 * len(rows) + 0.2)
    axes = fig.subplots(len(rows), width + 1, squeeze=False, width_ratios=[2] + [1] * width)
    for ax_row, (caption, images) in zip(axes, rows):
        for ax in ax_row:
            ax.axis("off")
        ax_row[0].text(1.0, 0.5, caption, ha="right", va="center", fontsize=8, transform=ax_row[0].transAxes)
        for ax, image in zip(ax_row[1:], images):
            ax.imshow(as_rgb(image), interpolation="nearest")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.1)
    return _png(fig)


def _natural(name: str) -> tuple:
    """Sort key putting ``cluster 2`` before ``cluster 10``."""
    head, _, tail = name.rpartition(" ")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


# html -------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "—"
    if isinstance(value, list):
        return f"{len(value)} items" if len(value) > 4 else ", ".join(_cell(v) for v in value)
    return str(value)


def html_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """An HTML table with escaped cells; numbers are right-aligned; an all-empty header is left out."""
    head = f"<thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in header)}</tr></thead>" if any(header) else ""
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{html.escape(_cell(v))}</td>' if isinstance(v, (int, float))
                         and not isinstance(v, bool) else f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def html_image(name: str, alt: str) -> str:
    """An <img> of a PNG beside the page."""
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def render_report(title: str, subtitle: str, sections: Sequence[tuple[str, str | None]]) -> str:
    """The whole page: title, a table of contents, then each section (``None`` body: not in this run)."""
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = "".join(f'<a href="#{a}">{html.escape(name)}</a>' for a, (name, _) in zip(anchors, sections))
    parts = [f'<section id="{a}"><h2>{html.escape(name)}</h2>'
             + (body if body is not None else '<p class="missing">Not in this run.</p>') + "</section>"
             for a, (name, body) in zip(anchors, sections)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>\n"
            f"<body><h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(subtitle)}</p><nav>{nav}</nav>\n"
            + "\n".join(parts) + "\n</body></html>\n")


# reading the store --------------------------------------------------------------
def _dataset_version(store: Store, dataset: str, version: int | None) -> dict | None:
    """A committed dataset version with its shards, or None."""
    if version is None:
        return None
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(dataset_versions).where(dataset_versions.c.dataset == dataset,
                                                             dataset_versions.c.version == version)).first()
        if row is None:
            return None
        shards = conn.execute(sa.select(dataset_shards.c.path, dataset_shards.c.num_rows)
                              .where(dataset_shards.c.dataset == dataset, dataset_shards.c.version == version)
                              .order_by(dataset_shards.c.path))
        return {**row._mapping, "info": row._mapping["info"] or {}, "shards": [dict(s._mapping) for s in shards]}


def _read(store: Store, rel_path: str, columns: list[str], where=None) -> pa.Table:
    fs, base = pafs.FileSystem.from_uri(store.root)
    return pq.read_table(f"{base.rstrip('/')}/{rel_path}", columns=columns, filters=where, filesystem=fs)


def _pixels_by_id(store: Store, pixels: dict, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Model-input images of a pixels version, by image id."""
    wanted, found = set(image_ids), {}
    for shard in pixels["shards"]:
        if len(found) == len(wanted):
            break
        table = _read(store, shard["path"], ["image_id", "pixels"], pc.field("image_id").isin(list(wanted)))
        if table.num_rows:
            shape = tuple(pixels["info"].get("shape") or shape_of(table.schema))
            found.update(zip(table.column("image_id").to_pylist(), pixels_to_array(table.column("pixels"), shape)))
    return found


# sections -------------------------------------------------------------------------
def _run_html(run: dict) -> str:
    finished = run.get("finished_at")
    took = f"{(finished - run['started_at']).total_seconds():.0f} s" if finished else "in progress"
    params = run.get("params") or {}
    summary = html_table(["", ""], [("run id", run["run_id"]), ("flow", run["flow"]), ("status", run["status"]),
                                    ("started (UTC)", f"{run['started_at']:%Y-%m-%d %H:%M:%S}"), ("took", took),
                                    ("source", params.get("source")), ("config", params.get("config")),
                                    ("overrides", params.get("overrides"))])
    stages = [(s["stage"], s["status"], (s["metrics"] or {}).get("seconds"),
               {k: v for k, v in (s["counts"] or {}).items() if not isinstance(v, (dict, list))}, s["error"])
              for s in run["stages"] if s["stage"] != "report"]
    return summary + html_table(["stage", "status", "seconds", "counts", "error"], stages)


def _ingest_html(store: Store, run_id: str, stage: dict | None) -> str | None:
    if stage is None:
        return None
    c = stage["counts"] or {}
    counts = html_table(["", "files"], [("files seen", c.get("files")), ("new images", c.get("new_images")),
                                        ("already stored", c.get("already_stored")),
                                        ("quarantined", c.get("quarantined")),
                                        ("images in the store after this run", c.get("total_images"))])
    reasons = sorted((c.get("quarantine_reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    out = counts + "<h3>Quarantine by reason</h3>"
    out += html_table(["reason", "files"], reasons) if reasons else "<p>Nothing was quarantined.</p>"
    rows = store.quarantine_rows(run_id)
    if rows:
        out += (f"<p class=\"note\">Files first quarantined by this run ({len(rows)}"
                f"{f', first {QUARANTINE_ROWS_SHOWN} shown' if len(rows) > QUARANTINE_ROWS_SHOWN else ''}):</p>")
        out += html_table(["file", "reason", "message"],
                          [(r["source"], r["error_class"], r["message"]) for r in rows[:QUARANTINE_ROWS_SHOWN]])
    return out


def _imputation_html(store: Store, pixels: dict | None, figures: dict[str, bytes]) -> str | None:
    if pixels is None:
        return None
    images = _dataset_version(store, "images", pixels["info"].get("images_version"))
    if images is None:
        return '<p class="missing">The images behind this pixels version are no longer in the catalog.</p>'
    rows = []
    for shard in images["shards"]:
        table = _read(store, shard["path"], ["image_id", "label", "height", "width", "channels", "pixels", "mask"],
                      pc.field("mask").is_valid())
        rows += table.slice(0, IMPUTATION_EXAMPLES - len(rows)).to_pylist()
        if len(rows) >= IMPUTATION_EXAMPLES:
            break
    note = (f"<p class=\"note\">Images with missing pixels (images v{images['version']}) and the model inputs "
            f"made from them (pixels v{pixels['version']}): imputed at the source resolution, then resized.</p>")
    if not rows:
        return note + "<p>No image in this data had missing pixels.</p>"
    imputed = _pixels_by_id(store, pixels, [r["image_id"] for r in rows])
    examples = []
    for r in rows:
        if r["image_id"] not in imputed:
            continue
        raw = np.frombuffer(r["pixels"], dtype=np.uint8).reshape(r["height"], r["width"], r["channels"])
        mask = unpack_mask(r["mask"], r["height"], r["width"])
        examples.append({"raw": raw, "mask": mask, "imputed": imputed[r["image_id"]],
                         "title": f"{r['label'] or 'unlabelled'}\n{r['image_id'][:10]}\n{mask.mean():.0%} missing"})
    figures["imputation.png"] = plot_imputation_examples(examples)
    return note + html_image("imputation.png", "imputation examples: before, mask, after")


def _training_html(model: dict | None, train: dict | None, figures: dict[str, bytes]) -> str | None:
    if model is None:
        return None
    m = model["metrics"] or {}
    trained = (train or {}).get("counts", {}).get("trained")
    note = (f"<p>Model v{model['version']} ({html.escape(model['name'])}), "
            + (f"trained in this run; {html.escape(str(train['outputs'].get('promotion')))}."
               if trained else f"reused: trained by run {html.escape(model['run_id'] or '?')}.")
            + f" Stage now: {html.escape(model['stage'])}.</p>")
    history = m.get("history") or []
    if not history:
        return note + "<p>No per-epoch history was recorded.</p>"
    figures["training.png"] = plot_training_curves(history)
    return note + html_image("training.png", "training curves: loss and accuracy per epoch")


def _evaluation_html(model: dict | None, figures: dict[str, bytes]) -> str | None:
    if model is None:
        return None
    m = model["metrics"] or {}
    summary = html_table(["holdout images", "accuracy", "macro precision", "macro recall", "macro F1",
                          "calibration error (ECE)"],
                         [(m.get("n"), m.get("accuracy"), m.get("macro_precision"), m.get("macro_recall"),
                           m.get("macro_f1"), m.get("ece"))])
    classes, cm = list(m.get("per_class_f1") or {}), m.get("confusion_matrix")
    if not cm or len(cm) != len(classes):
        return summary
    figures["confusion.png"] = plot_confusion_matrix(cm, classes)
    counts = np.asarray(cm, dtype=np.int64)
    tp, support, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    per_class = [(name, int(support[i]), float(tp[i] / predicted[i]) if predicted[i] else None,
                  float(tp[i] / support[i]) if support[i] else None, m["per_class_f1"][name])
                 for i, name in enumerate(classes)]
    return (summary + html_image("confusion.png", "confusion matrix heatmap")
            + html_table(["class", "support", "precision", "recall", "F1"], per_class))


def _embedding_html(store: Store, predictions: dict | None, clusters: dict | None,
                    figures: dict[str, bytes]) -> str | None:
    if predictions is None:
        return None
    total = predictions["num_rows"]
    keep = np.sort(np.random.default_rng(0).choice(total, size=min(MAP_POINTS, total), replace=False))
    parts, start = [], 0
    for shard in predictions["shards"]:
        local = keep[(keep >= start) & (keep < start + shard["num_rows"])] - start
        if len(local):
            parts.append(_read(store, shard["path"], ["image_id", "label", "embedding"]).take(local))
        start += shard["num_rows"]
    if not parts:
        return "<p>No predictions to map.</p>"
    sample = pa.concat_tables(parts)
    xy = pca_2d(fixed_list_to_array(sample.column("embedding")))
    labels = [v if v is not None else "unlabelled" for v in sample.column("label").to_pylist()]
    assigned = None
    if clusters is not None:
        table = pa.concat_tables([_read(store, s["path"], ["image_id", "cluster"]) for s in clusters["shards"]])
        index = pc.index_in(sample.column("image_id"), value_set=table.column("image_id").combine_chunks())
        assigned = pc.fill_null(pc.take(table.column("cluster"), index), -1).to_numpy(zero_copy_only=False)
    figures["embeddings.png"] = plot_embedding_map(xy, labels, assigned)
    return (f"<p class=\"note\">{len(sample)} of {total} images (predictions v{predictions['version']}), "
            "512-d embeddings projected on their first two principal components.</p>"
            + html_image("embeddings.png", "embedding map coloured by cluster and by label"))


def _montage_html(store: Store, run_id: str, predictions: dict | None, cluster: dict | None,
                  figures: dict[str, bytes]) -> str | None:
    if cluster is None:
        return None
    summaries = sorted(store.query("cluster_summaries", cluster.get("table_run_id") or run_id),
                       key=lambda s: s["cluster"])
    if not summaries:
        return "<p>No cluster summaries were recorded.</p>"
    table = html_table(["cluster", "size", "top label", "purity", "top labels"],
                       [(s["cluster"], s["size"], s["top_label"], None if s["purity"] is None else f"{s['purity']:.0%}",
                         s["top_labels"]) for s in summaries])
    pixels = _dataset_version(store, "pixels", (predictions or {}).get("info", {}).get("pixels_version"))
    exemplars = {s["cluster"]: (s["exemplars"] or [])[:EXEMPLARS_PER_CLUSTER] for s in summaries}
    if pixels is None or not any(exemplars.values()):
        return table + "<p>No exemplar images are available for these clusters.</p>"
    found = _pixels_by_id(store, pixels, [i for ids in exemplars.values() for i in ids])
    rows = [(f"cluster {s['cluster']} · {s['size']} images\n"
             + (f"{s['top_label']} ({s['purity']:.0%})" if s["top_label"] is not None else "no labels"),
             [found[i] for i in exemplars[s["cluster"]] if i in found]) for s in summaries]
    figures["exemplars.png"] = plot_cluster_montage(rows)
    return (table + "<p class=\"note\">Exemplars: the images nearest each cluster's centre, nearest first.</p>"
            + html_image("exemplars.png", "exemplar images per cluster"))


# the stage ------------------------------------------------------------------------
def write_report(settings: Settings, run_id: str) -> StageResult:
    """Write the HTML report of ``run_id`` and its PNGs to ``<store root>/reports/<run id>/``.

    Raises:
        LookupError: no such run in the store.
    """
    store = Store.from_settings(settings)
    run = store.get_run(run_id)
    if run is None:
        raise LookupError(f"no run {run_id!r} in {store.root}; see `fusion runs`")
    stages = {s["stage"]: s for s in run["stages"] if s["status"] == "completed"}
    outputs = {name: s["outputs"] or {} for name, s in stages.items()}
    model = store.get_model(outputs["train"]["model_version"]) if "train" in outputs else None
    clusters = _dataset_version(store, "clusters", outputs.get("cluster", {}).get("version"))
    predictions = _dataset_version(store, "predictions", outputs.get("infer", {}).get("version")
                                   or (clusters or {}).get("info", {}).get("predictions_version"))
    pixels = _dataset_version(store, "pixels", outputs.get("preprocess", {}).get("version"))
    figures: dict[str, bytes] = {}
    sections = [
        ("Run summary", _run_html(run)),
        ("Ingestion and quarantine", _ingest_html(store, run_id, stages.get("ingest"))),
        ("Imputation examples", _imputation_html(store, pixels, figures)),
        ("Training curves", _training_html(model, stages.get("train"), figures)),
        ("Holdout evaluation", _evaluation_html(model, figures)),
        ("Embedding map", _embedding_html(store, predictions, clusters, figures)),
        ("Cluster exemplars", _montage_html(store, run_id, predictions, outputs.get("cluster"), figures)),
    ]
    page = render_report(f"Fusion run {run_id}", f"{run['flow']} flow, {run['status']}; store {store.root}",
                         sections)
    fs, base = pafs.FileSystem.from_uri(store.root)
    folder = f"{base.rstrip('/')}/{REPORT_DIR}/{run_id}"
    fs.create_dir(folder, recursive=True)
    for name, data in [*figures.items(), ("index.html", page.encode())]:  # the page last: its images exist first
        with fs.open_output_stream(f"{folder}/{name}") as fh:
            fh.write(data)
    path = store.path(REPORT_DIR, run_id, "index.html")
    log.info("report: %s (%d images)", path, len(figures))
    return StageResult("report", counts={"sections": sum(body is not None for _, body in sections),
                                         "images": len(figures)},
                       outputs={"report": path, "images": sorted(figures)})
