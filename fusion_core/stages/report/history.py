"""The runs index, ``reports/index.html``: the store's runs, newest first, with their headline figures and
links to their reports, and the nightly runs' trends (images, holdout accuracy, duration)."""

from __future__ import annotations

from fusion_core import uri
from fusion_core.stages.report.page import html_cell, html_image, render_report
from fusion_core.stages.report.plots import plot_trends
from fusion_core.store import Store

INDEX_RUNS = 200  # the newest runs the index lists
TRENDS_FILE = "trends.png"


def run_figures(run: dict, models: dict[int, dict]) -> dict:
    """A run's row of the index: when, what, how it ended, how long, and its headline figures (``models``: the
    store's models by version)."""
    stages = {s["stage"]: s for s in run["stages"] if s["status"] == "completed"}
    ingest = stages.get("ingest", {}).get("counts") or {}
    train = stages.get("train", {}).get("outputs") or {}
    model = models.get(train.get("model_version"))
    finished = run.get("finished_at")
    return {"run": run["run_id"], "started (UTC)": f"{run['started_at']:%Y-%m-%d %H:%M}", "flow": run["flow"],
            "status": run["status"], "seconds": (finished - run["started_at"]).total_seconds() if finished else None,
            "images": ingest.get("total_images"), "new images": ingest.get("new_images"),
            "holdout accuracy": model["metrics"].get("accuracy") if model else None,
            "drift flagged": ", ".join((stages.get("drift", {}).get("outputs") or {}).get("flagged") or []),
            "champion": (f"v{model['version']} promoted" if train.get("stage") == "champion" and
                         stages["train"]["counts"].get("trained") else "") if model else ""}


def write_runs_index(store: Store, report_dir: str, current: dict) -> str:
    """Write ``<report_dir>/index.html`` (and its trends figure) over the newest runs; ``current`` is the run
    being reported on, as its report sees it (its status known before the catalog's). Returns the page's path."""
    runs = [current if r["run_id"] == current["run_id"] else r for r in store.list_runs_with_stages(INDEX_RUNS)]
    models = {m["version"]: m for m in store.list_models()}
    rows = [run_figures(run, models) for run in runs]
    reported = {run["run_id"] for run in runs if any(s["stage"] == "report" and s["status"] == "completed"
                                                     for s in run["stages"])} | {current["run_id"]}
    nightly = [row for row in reversed(rows) if row["flow"] == "nightly" and row["status"] == "completed"]
    figures = {}
    if len(nightly) >= 2:
        figures[TRENDS_FILE] = plot_trends([row["started (UTC)"] for row in nightly],
                                           {name: [row[name] for row in nightly]
                                            for name in ("images", "holdout accuracy", "seconds")})
    columns = list(rows[0])
    table = ("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(_cell(c, row, reported) for c in columns) + "</tr>" for row in rows)
             + "</tbody></table>")
    trends = (html_image(TRENDS_FILE, "images, holdout accuracy and duration over the nightly runs")
              if figures else "<p class=\"note\">Trends show once two nightly runs have completed.</p>")
    page = render_report("Fusion runs", f"the newest {len(rows)} runs of the store {store.root}",
                         [("Nightly trends", trends), ("Runs, newest first", table)])
    for name, data in [*figures.items(), ("index.html", page.encode())]:
        uri.write_bytes(uri.join(report_dir, name), data)
    return uri.join(report_dir, "index.html")


def _cell(column: str, row: dict, reported: set[str]) -> str:
    """A cell of the index; a run's id links to its report when it has one."""
    if column == "run" and row["run"] in reported:
        return f'<td><a href="{row["run"]}/index.html">{row["run"]}</a></td>'
    return html_cell(row[column])
