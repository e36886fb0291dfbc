"""The report's cluster section: the clustering's quality figures, the cluster table and, per cluster, captioned
thumbnails of the images nearest its centre (exemplars) and farthest from it (outliers), each linked to the
cluster's gallery page."""

from __future__ import annotations

import html

from fusion_core.stages.report.gallery import figure_html, group_page, thumbnail_png
from fusion_core.stages.report.page import html_table
from fusion_core.stages.report.sections import Section, pixels_by_id
from fusion_core.store import Store

EXEMPLARS_PER_CLUSTER = 8


def cluster_exemplars(store: Store, run_id: str, predictions: dict | None, cluster: dict | None,
                      quality: dict | None = None) -> Section:
    """The clustering's quality figures, the cluster summaries and each cluster's exemplars and outliers.

    Args:
        predictions: the predictions dataset version clustered, or None.
        cluster: the outputs of the run's completed cluster stage, or None.
    """
    title = "Cluster exemplars"
    if cluster is None:
        return Section(title, None)
    summaries = store.select_results("cluster_summaries", cluster.get("table_run_id") or run_id, order_by=("cluster",))
    if not summaries:
        return Section(title, "<p>No cluster summaries were recorded.</p>")
    scores = {k: v for k, v in (quality or {}).items() if k != "seconds"}
    table = (html_table(list(scores), [list(scores.values())]) if scores else "") + html_table(
        ["cluster", "size", "top label", "purity", "top labels"],
        [(s["cluster"], s["size"], s["top_label"], None if s["purity"] is None else f"{s['purity']:.0%}",
          s["top_labels"]) for s in summaries])
    pixels = store.get_version("pixels", (predictions or {}).get("info", {}).get("pixels_version"))
    chosen = {s["cluster"]: [(s["exemplars"] or [])[:EXEMPLARS_PER_CLUSTER],
                             (s["outliers"] or [])[:EXEMPLARS_PER_CLUSTER]] for s in summaries}
    wanted = [i for groups in chosen.values() for ids in groups for i in ids]
    if pixels is None or not wanted:
        return Section(title, table + "<p>No exemplar images are available for these clusters.</p>")
    found = pixels_by_id(store, pixels, wanted)
    predicted = store.results_by_image("predictions", predictions["run_id"], found)
    body = table + ("<p class=\"note\">Per cluster, the images nearest its centre, then those farthest from it "
                    "(worth a look for mislabelled or unusual images); each links to the cluster's gallery page.</p>")
    for s in summaries:
        href = group_page(f"cluster-{s['cluster']}")
        heading = f"Cluster {s['cluster']} · {s['size']} images · " + (
            f"mostly {s['top_label']} ({s['purity']:.0%})" if s["top_label"] is not None else "no labels")
        body += f'<h3><a href="{html.escape(href)}">{html.escape(heading)}</a></h3>'
        for what, ids in zip(("nearest the centre", "farthest from it"), chosen[s["cluster"]]):
            thumbs = "".join(_thumbnail(i, predicted.get(i) or {}, href) for i in ids if i in found)
            body += f'<p class="note">{what}</p><div class="grid">{thumbs}</div>' if thumbs else ""
    return Section(title, body, {f"thumbs/{i}.png": thumbnail_png(image) for i, image in found.items()})


def _thumbnail(image_id: str, prediction: dict, href: str) -> str:
    predicted = prediction.get("predicted")
    return figure_html(f"thumbs/{image_id}.png", href, [image_id[:12], prediction.get("label") or "unlabelled",
                                                        predicted and f"predicted {predicted}"])
