"""What the ``fusion`` command prints: a run's account, tables of rows, and file exports."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

from fusion_core.formatting import format_value
from fusion_core.store import Store

# too long for a terminal; in the report, `fusion models` and the Prefect artifacts
HIDDEN = ("confusion_matrix", "per_class_f1", "checks", "comparison")
FORMATS = ("table", "json", "csv", "ids")
ID_COLUMNS = ("image_id", "version", "run_id")  # what `-f ids` prints: the first of them a row has
TABLE_ROWS = 20  # rows a table shows unless told otherwise


def headlines(stages: dict) -> list[str]:
    """One sentence per stage that a person wants first (for the stages that report those figures)."""
    out = []
    c = (stages.get("ingest") or {}).get("counts") or {}
    if {"new_images", "already_stored", "quarantined"} <= c.keys():
        out.append(f"ingested {c['new_images']} new images ({c['already_stored']} already stored), "
                   f"quarantined {c['quarantined']} files {format_value(c.get('quarantine_reasons', {}))}")
    drift = (stages.get("drift") or {}).get("outputs") or {}
    if drift.get("flagged"):
        out.append(f"DRIFT flagged: {', '.join(drift['flagged'])}")
    elif "checks" in drift:
        out.append(f"no drift in {len(drift['checks'])} checks" if drift["checks"] else f"drift: {drift.get('note')}")
    train = stages.get("train") or {}
    m, o = train.get("metrics") or {}, train.get("outputs") or {}
    if {"accuracy", "macro_f1"} <= m.keys() and {"model_version", "stage"} <= o.keys():
        out.append(f"holdout accuracy {m['accuracy']:.3f} (macro F1 {m['macro_f1']:.3f}), "
                   f"model v{o['model_version']} is {o['stage']}: {o.get('promotion')}")
    cluster = stages.get("cluster") or {}
    if "clusters" in (cluster.get("counts") or {}):
        quality = ", ".join(f"{k} {v:.3f}" for k, v in cluster["metrics"].items() if k in ("silhouette", "nmi", "ari"))
        out.append(f"{cluster['counts']['clusters']} clusters found ({quality})")
    c = (stages.get("mine") or {}).get("counts") or {}
    if "label_issues" in c:
        out.append(f"mined: {c['in_duplicate_sets']} images in {c['duplicate_sets']} duplicate sets "
                   f"({c['leaking']} across train and holdout), {c['label_issues']} likely label errors, "
                   f"{c['outliers']} outliers, {c['poor_quality']} poor images (fusion find)")
    return out


def describe_run(run: dict, store: Store, compact: bool = False) -> str:
    """A readable account of a run: each stage with its counts, metrics and outputs (``compact``: one line
    each, its status, seconds and counts), then where results are."""
    took = (run["finished_at"] - run["started_at"]).total_seconds() if run.get("finished_at") else None
    lines = [f"Run {run['run_id']} ({run['flow']}): {run['status']}"
             + (f" in {took:.0f}s" if took is not None else "")]
    lines += [f"  * {line}" for line in headlines({s["stage"]: s for s in run["stages"]})]
    for stage in run["stages"]:
        lines += [stage_line(stage)] if compact else stage_lines(stage)
    dashboard = (run.get("params") or {}).get("ray_dashboard")
    if run["status"] == "running" and dashboard:
        lines.append(f"  ray dashboard  {dashboard}")
    lines += ["Results",
              f"  store root   {store.root}",
              f"  catalog      {store.engine.url.render_as_string(hide_password=True)}"
              " (tables: runs, run_stages, models, quarantine, predictions, cluster_assignments, cluster_summaries,"
              " findings, decisions)",
              f"  datasets     {store.path('datasets')}/<images|pixels|predictions|clusters|mining>/*.parquet",
              f"  details      fusion show {run['run_id']} --store {store.root}",
              *(f"  report       {s['outputs']['report']}" for s in run["stages"] if (s["outputs"] or {}).get("report")),
              *(f"  gallery      {s['outputs']['gallery']}" for s in run["stages"] if (s["outputs"] or {}).get("gallery"))]
    prefect = (run.get("params") or {}).get("prefect")  # the Prefect flow run, when the run had one
    if prefect:
        lines.append(f"  prefect      {prefect['url'] or 'flow run ' + prefect['flow_run_id']}")
    return "\n".join(lines)


def stage_lines(stage: dict) -> list[str]:
    """A stage's status (and error), then a line each for its counts, metrics and outputs."""
    lines = [f"  {stage['stage']:<11} {stage['status']}" + (f": {stage['error']}" if stage["error"] else "")]
    for part in ("counts", "metrics", "outputs"):
        values = {k: v for k, v in (stage[part] or {}).items() if k not in HIDDEN}
        if values:
            lines.append(f"      {part + ':':<9}"
                         + ", ".join(f"{k}={format_value(v, none='None')}" for k, v in values.items()))
    return lines


def stage_line(stage: dict) -> str:
    """A stage in one line: status, seconds, and its counts that are single figures (or its error)."""
    seconds = (stage["metrics"] or {}).get("seconds")
    counts = ", ".join(f"{k}={format_value(v)}" for k, v in (stage["counts"] or {}).items()
                       if not isinstance(v, (dict, list)))
    took = f"{seconds:6.1f} s" if seconds is not None else " " * 8
    return f"  {stage['stage']:<11} {stage['status']:<10}{took}  " + (stage["error"] or counts)


def table_lines(rows: list[dict], columns: list[str], limit: int) -> list[str]:
    """Aligned text lines of the first ``limit`` rows, a header, and a count of all rows."""
    def cell(value) -> str:
        return format_value(value, float_format=".4f")

    widths = {c: max([len(c)] + [len(cell(r[c])) for r in rows[:limit]]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(cell(row[c]).ljust(widths[c]) for c in columns) for row in rows[:limit]]
    shown = f", first {limit} shown" if len(rows) > limit else ""
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'}{shown})")
    return lines


def export_rows(rows: list[dict], columns: list[str], out: Path) -> None:
    """Write rows to a ``.csv`` or ``.parquet`` file.

    Raises:
        ValueError: another file suffix.
    """
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows]), out)
    elif out.suffix == ".csv":
        with open(out, "w", newline="") as fh:
            _write_csv(fh, rows, columns)
    else:
        raise ValueError(f"--out {out}: use a .csv or .parquet file name")


def render(rows: list[dict], fmt: str, columns: list[str], limit: int | None = None) -> str:
    """Rows as text: a ``table`` of ``columns`` (the first ``limit``, ``TABLE_ROWS`` by default), every field
    of each row as ``json`` or ``csv``, or one id per line (``ids``: for pipes), all rows unless ``limit``."""
    if fmt == "table":
        return "\n".join(table_lines(rows, columns, limit or TABLE_ROWS))
    shown = rows if limit is None else rows[:limit]
    if fmt == "ids":
        return "\n".join(str(next(row[c] for c in ID_COLUMNS if c in row)) for row in shown)
    if fmt == "json":
        return as_json(shown)
    out = io.StringIO()
    _write_csv(out, shown, list(shown[0]) if shown else columns)
    return out.getvalue().rstrip("\n")


def as_json(value) -> str:
    """``value`` as indented JSON; times in ISO 8601."""
    return json.dumps(value, indent=2, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v))


def _write_csv(fh, rows: list[dict], columns: list[str]) -> None:
    """A header and the rows, lists and dicts as JSON, times in ISO 8601."""
    writer = csv.DictWriter(fh, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)


def _csv_cell(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value.isoformat() if isinstance(value, dt.datetime) else value
