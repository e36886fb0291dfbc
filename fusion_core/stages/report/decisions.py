"""The report's account of the decisions a model was trained with: people's exclusions and corrected labels,
and the holdout leaks moved into the training data."""

from __future__ import annotations

from fusion_core.stages.report.page import html_table
from fusion_core.store import Store

DECISIONS_SHOWN = 20


def decisions_applied(store: Store, model: dict) -> str:
    """How many images the model's training left out, relabelled or moved out of the holdout, and the newest of
    people's decisions in force (empty when it applied none)."""
    applied = (model["config"] or {}).get("decisions") or {}
    if not any(applied.values()):
        return ""
    rows = store.decision_rows()[:DECISIONS_SHOWN]
    paths = store.sources_of(r["image_id"] for r in rows)
    note = (f"<p>Trained and scored with people's decisions: {applied['excluded']} image(s) excluded, "
            f"{applied['relabelled']} label(s) corrected; {applied['leaks_moved']} holdout image(s) with a "
            "near-duplicate in the training data moved there.</p>")
    if not rows:
        return note
    return note + "<p>The newest decisions in force (all: <code>fusion decisions</code>):</p>" + html_table(
        ["decision", "label", "source", "by", "at", "reason"],
        [(r["action"], r["label"], (paths.get(r["image_id"]) or [r["image_id"]])[0], r["actor"],
          f"{r['decided_at']:%Y-%m-%d %H:%M}", r["reason"]) for r in rows])
