"""The report's sections, one function each, in page order.

Each returns a ``Section``: its HTML (None when its stage is not part of the run) and
the PNGs it shows. Data comes from the catalog (``Store``) and the shards it lists.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusion_core.learning.scoring import comparison_rows
from fusion_core.stages.report.decisions import decisions_applied
from fusion_core.stages.report.page import html_image, html_table
from fusion_core.stages.report.plots import pca_2d, plot_confusion_matrix, plot_embedding_map, plot_training_curves
from fusion_core.store import Store
from fusion_core.store.common import now
from fusion_core.store.datasets import fixed_list_to_array, pixels_to_array, read_shard, shape_of

MAP_POINTS = 5000
QUARANTINE_ROWS_SHOWN = 20


@dataclass(frozen=True)
class Section:
    """One section of the page.

    Attributes:
        title: its heading.
        body: its HTML, or None when its stage is not part of the run.
        figures: the PNGs it shows, by file name.
    """

    title: str
    body: str | None
    figures: dict[str, bytes] = field(default_factory=dict)


def run_summary(run: dict) -> Section:
    """The run's id, flow, status, timing and parameters, then a table of its stages. A report written as its
    run's last stage (its outcome known, the run not closed yet) gives the time up to the report."""
    finished = run.get("finished_at")
    if finished:
        took = f"{(finished - run['started_at']).total_seconds():.0f} s"
    elif run["status"] != "running":
        took = f"{(now() - run['started_at']).total_seconds():.0f} s (up to this report)"
    else:
        took = "in progress"
    params = run.get("params") or {}
    summary = html_table(["", ""], [("run id", run["run_id"]), ("flow", run["flow"]), ("status", run["status"]),
                                    ("started (UTC)", f"{run['started_at']:%Y-%m-%d %H:%M:%S}"), ("took", took),
                                    ("source", params.get("source")), ("config", params.get("config")),
                                    ("overrides", params.get("overrides"))])
    stages = [(s["stage"], s["status"], (s["metrics"] or {}).get("seconds"),
               {k: v for k, v in (s["counts"] or {}).items() if not isinstance(v, (dict, list))}, s["error"])
              for s in run["stages"] if s["stage"] != "report"]
    return Section("Run summary", summary + html_table(["stage", "status", "seconds", "counts", "error"], stages))


def what_changed(run: dict, previous: dict | None, model: dict | None, store: Store) -> Section:
    """The headlines: the promotion decision and why, drift, this run's model against the champion on the
    same holdout (overall and per class), and this run against the previous run of its flow."""
    stages = {s["stage"]: s for s in run["stages"] if s["status"] == "completed"}
    parts = []
    train = stages.get("train")
    if train:
        parts.append(f"<p><b>Promotion:</b> {html.escape(str(train['outputs'].get('promotion')))}</p>")
    drift = stages.get("drift")
    if drift:
        flagged = drift["outputs"].get("flagged") or []
        parts.append(f"<p class=\"{'flag' if flagged else ''}\"><b>Drift:</b> "
                     + (f"flagged {html.escape(', '.join(flagged))} (see Drift below)" if flagged else
                        html.escape(drift["outputs"].get("note") or "nothing flagged")) + "</p>")
    rows = comparison_rows(model["metrics"]) if model else []
    if rows:
        vs = model["metrics"]["vs_champion"]
        parts.append(f"<h3>Model v{model['version']} vs champion v{vs['version']} on the same {vs['n']} holdout "
                     f"images</h3>" + html_table(["", f"v{model['version']}", f"champion v{vs['version']}", "change"],
                                                 [(r["metric"], r["challenger"], r["champion"],
                                                   _change(r["challenger"], r["champion"])) for r in rows])
                     + f"<p class=\"note\">McNemar's test: v{model['version']} alone right on {vs['challenger_only']} "
                       f"images, the champion alone on {vs['champion_only']}; one-sided p = {vs['p_value']:.3g}.</p>")
    if previous is not None:
        changed = [row for row in _run_changes(previous, run, store) if row[1] != row[2]]
        title = f"the previous {html.escape(run['flow'])} run ({html.escape(previous['run_id'])})"
        parts.append(f"<h3>This run vs {title}</h3>" + html_table(["", "previous", "this run", "change"], changed)
                     if changed else f"<p><b>Nothing changed</b> since {title}: the same images, model and "
                                     f"results.</p>")
    elif run["flow"] == "nightly":
        parts.append("<p>No earlier completed run of this flow to compare with.</p>")
    return Section("What changed", "".join(parts) or None)


def _change(new, old):
    return new - old if isinstance(new, (int, float)) and isinstance(old, (int, float)) else None


def _run_changes(previous: dict, run: dict, store: Store) -> list[tuple]:
    """Headline figures of two runs side by side: images, holdout accuracy and F1 (overall, per class),
    clusters and their quality (the report shows those that differ)."""
    def figures(r: dict) -> dict:
        stages = {s["stage"]: s for s in r["stages"] if s["status"] == "completed"}
        out = {"images in the store": (stages.get("ingest", {}).get("counts") or {}).get("total_images")}
        model = store.get_model(stages["train"]["outputs"]["model_version"]) if "train" in stages else None
        if model:
            m = model["metrics"]
            out.update({"model version": model["version"], "holdout accuracy": m.get("accuracy"),
                        "holdout macro F1": m.get("macro_f1")})
            out.update({f"F1 {c}": v for c, v in (m.get("per_class_f1") or {}).items()})
        cluster = stages.get("cluster")
        if cluster:
            out["clusters"] = (cluster["counts"] or {}).get("clusters")
            out.update({f"cluster {k}": v for k, v in (cluster["metrics"] or {}).items() if k != "seconds"})
        return out

    before, now = figures(previous), figures(run)
    return [(name, before.get(name), now.get(name), _change(now.get(name), before.get(name)))
            for name in dict.fromkeys([*now, *before])]


def drift_checks(stage: dict | None) -> Section:
    """Each drift check with its value, threshold and p-value; flagged checks first and marked."""
    title = "Drift"
    if stage is None:
        return Section(title, None)
    out = stage["outputs"] or {}
    counts = stage["counts"] or {}
    if not out.get("checks"):
        return Section(title, f"<p>{html.escape(out.get('note') or 'No checks were run.')}</p>")
    note = (f"<p class=\"note\">{counts.get('new_images', 0)} new images against {counts.get('reference_images', 0)} "
            f"the champion (v{out.get('reference_model')}) was trained on. A check is flagged when its value passes "
            f"the threshold and its test is significant.</p>")
    checks = sorted(out["checks"], key=lambda c: not c["flagged"])
    return Section(title, note + html_table(["check", "flagged", "value", "threshold", "p-value"],
                                            [(c["check"], "FLAGGED" if c["flagged"] else "", c["value"],
                                              c["threshold"], c["p_value"]) for c in checks]))


def ingestion(store: Store, run_id: str, stage: dict | None) -> Section:
    """File counts of the ingest stage, quarantine by reason and the files this run quarantined."""
    title = "Ingestion and quarantine"
    if stage is None:
        return Section(title, None)
    c = stage["counts"] or {}
    counts = html_table(["", "files"], [("files seen", c.get("files")), ("new images", c.get("new_images")),
                                        ("already stored", c.get("already_stored")),
                                        ("quarantined", c.get("quarantined")),
                                        ("images in the store after this run", c.get("total_images"))])
    reasons = sorted((c.get("quarantine_reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    body = counts + "<h3>Quarantine by reason</h3>"
    body += html_table(["reason", "files"], reasons) if reasons else "<p>Nothing was quarantined.</p>"
    rows = store.quarantine_rows(run_id)
    if rows:
        body += (f"<p class=\"note\">Files first quarantined by this run ({len(rows)}"
                 f"{f', first {QUARANTINE_ROWS_SHOWN} shown' if len(rows) > QUARANTINE_ROWS_SHOWN else ''}):</p>")
        body += html_table(["file", "reason", "message"],
                           [(r["source"], r["error_class"], r["message"]) for r in rows[:QUARANTINE_ROWS_SHOWN]])
    return Section(title, body)


def training(store: Store, model: dict | None, train: dict | None) -> Section:
    """Where the model came from (trained here or reused), people's decisions it applied, its per-epoch curves.

    Args:
        model: the run's model, or None.
        train: the run's completed train stage, or None.
    """
    title = "Training curves"
    if model is None:
        return Section(title, None)
    trained = ((train or {}).get("counts") or {}).get("trained")
    note = (f"<p>Model v{model['version']} ({html.escape(model['name'])}), "
            + (f"trained in this run; {html.escape(str(train['outputs'].get('promotion')))}."
               if trained else f"reused: trained by run {html.escape(model['run_id'] or '?')}.")
            + f" Stage now: {html.escape(model['stage'])}.</p>") + decisions_applied(store, model)
    history = (model["metrics"] or {}).get("history") or []
    if not history:
        return Section(title, note + "<p>No per-epoch history was recorded.</p>")
    return Section(title, note + html_image("training.png", "training curves: loss and accuracy per epoch"),
                   {"training.png": plot_training_curves(history)})


def evaluation(model: dict | None) -> Section:
    """The model's holdout metrics, its confusion matrix and per-class precision, recall and F1."""
    title = "Holdout evaluation"
    if model is None:
        return Section(title, None)
    m = model["metrics"] or {}
    summary = html_table(["holdout images", "accuracy", "macro precision", "macro recall", "macro F1",
                          "calibration error (ECE)"],
                         [(m.get("n"), m.get("accuracy"), m.get("macro_precision"), m.get("macro_recall"),
                           m.get("macro_f1"), m.get("ece"))])
    classes, cm = list(m.get("per_class_f1") or {}), m.get("confusion_matrix")
    if not cm or len(cm) != len(classes):
        return Section(title, summary)
    counts = np.asarray(cm, dtype=np.int64)
    tp, support, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    per_class = [(name, int(support[i]), float(tp[i] / predicted[i]) if predicted[i] else None,
                  float(tp[i] / support[i]) if support[i] else None, m["per_class_f1"][name])
                 for i, name in enumerate(classes)]
    return Section(title, summary + html_image("confusion.png", "confusion matrix heatmap")
                   + html_table(["class", "support", "precision", "recall", "F1"], per_class),
                   {"confusion.png": plot_confusion_matrix(cm, classes)})


def embedding_map(store: Store, predictions: dict | None, clusters: dict | None) -> Section:
    """A PCA map of a fixed sample of embeddings, coloured by label and, given clusters, by cluster.

    Args:
        predictions: the predictions dataset version, or None.
        clusters: the clusters dataset version, or None.
    """
    title = "Embedding map"
    if predictions is None:
        return Section(title, None)
    total = predictions["num_rows"]
    keep = np.sort(np.random.default_rng(0).choice(total, size=min(MAP_POINTS, total), replace=False))
    parts, start = [], 0
    for shard in predictions["shards"]:
        local = keep[(keep >= start) & (keep < start + shard["num_rows"])] - start
        if len(local):
            parts.append(read_shard(store.root, shard["path"], ["image_id", "label", "embedding"]).take(local))
        start += shard["num_rows"]
    if not parts:
        return Section(title, "<p>No predictions to map.</p>")
    sample = pa.concat_tables(parts)
    embeddings = fixed_list_to_array(sample.column("embedding"))
    xy = pca_2d(embeddings)
    labels = [v if v is not None else "unlabelled" for v in sample.column("label").to_pylist()]
    assigned = None
    if clusters is not None:
        table = pa.concat_tables([read_shard(store.root, s["path"], ["image_id", "cluster"])
                                  for s in clusters["shards"]])
        index = pc.index_in(sample.column("image_id"), value_set=table.column("image_id").combine_chunks())
        assigned = pc.fill_null(pc.take(table.column("cluster"), index), -1).to_numpy(zero_copy_only=False)
    return Section(title, f"<p class=\"note\">{len(sample)} of {total} images (predictions v{predictions['version']}), "
                          f"{embeddings.shape[1]}-d embeddings projected on their first two principal "
                          "components.</p>"
                          + html_image("embeddings.png", "embedding map coloured by cluster and by label"),
                   {"embeddings.png": plot_embedding_map(xy, labels, assigned)})


def pixels_by_id(store: Store, pixels: dict, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Model-input images of a pixels version, by image id."""
    wanted, found = set(image_ids), {}
    for shard in pixels["shards"]:
        if len(found) == len(wanted):
            break
        table = read_shard(store.root, shard["path"], ["image_id", "pixels"], pc.field("image_id").isin(list(wanted)))
        if table.num_rows:
            shape = tuple(pixels["info"].get("shape") or shape_of(table.schema))
            found.update(zip(table.column("image_id").to_pylist(), pixels_to_array(table.column("pixels"), shape)))
    return found
