"""The report's mining section: what the mine stage found, the most certain findings of each kind first."""

from __future__ import annotations

from fusion_core.learning.mining import FINDINGS
from fusion_core.stages.report.page import html_table
from fusion_core.stages.report.sections import Section
from fusion_core.store import Store

ROWS_PER_KIND = 10
KINDS = {"label_error": ("Likely label errors", "how doubtful the given label is"),
         "leak": ("Duplicates across train and holdout", "similarity to the nearest copy"),
         "duplicate": ("Near-duplicates", "similarity to the nearest copy"),
         "outlier": ("Outliers", "uniqueness"),
         "quality": ("Poor images", "how many quality flags")}
SHOWN = {"label_error": "suggested", "quality": "flags"}  # the column beside the label; else duplicate_set


def mining_findings(store: Store, run_id: str, mine: dict | None) -> Section:
    """The mine stage's counts, then the top findings of each kind with their source paths.

    Args:
        mine: the run's completed mine stage, or None.
    """
    title = "Mining"
    if mine is None:
        return Section(title, None)
    counts = {k: v for k, v in (mine["counts"] or {}).items() if k not in ("reused", "images")}
    body = html_table(list(counts), [list(counts.values())])
    table_run = (mine["outputs"] or {}).get("table_run_id") or run_id
    for kind, (heading, score) in KINDS.items():
        rows = store.select_results("findings", table_run, equal={"kind": kind}, order_by=("-score", "image_id"),
                                    limit=ROWS_PER_KIND)
        if not rows:
            continue
        paths = store.sources_of(r["image_id"] for r in rows)
        body += f"<h3>{heading}</h3>" + html_table(
            ["score", "source", "label", SHOWN.get(kind, "duplicate_set"), "split"],
            [(round(r["score"], 3), (paths.get(r["image_id"]) or [r["image_id"]])[0], r["label"],
              r[SHOWN.get(kind, "duplicate_set")], r["split"]) for r in rows])
        body += f"<p class=\"note\">score: {score}; all of them: <code>fusion find {FINDINGS[kind]}</code></p>"
    return Section(title, body)
