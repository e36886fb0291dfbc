"""The ``fusion`` commands that read an existing store: runs, results and images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import (ConfigOpt, FormatOpt, LimitOpt, RunOpt, SetOpt, StoreOpt, check_format, complete_from,
                           complete_label, complete_run, fail, find_run, image_ids, open_store, require_known)
from flows.terminal import TABLE_ROWS, as_json, describe_run, export_rows, render, table_lines
from fusion_core.store import Store
from fusion_core.tools.browse import GROUPS

OutOpt = typer.Option(None, "--out", help="also export all matching rows to a .csv or .parquet file")
SPLITS = ("train", "val", "test")
PREDICTION_ORDERS = {"confidence": ("-confidence", "image_id"), "uncertain": ("confidence", "image_id"),
                     "label": ("label", "-confidence", "image_id"),
                     "predicted": ("predicted", "-confidence", "image_id")}
PathOpt = typer.Option(None, "--path", help="only images with a source path matching this glob (* and ?)")


def print_rows(rows: list[dict], fmt: str, columns: list[str], limit: int | None, out: Path | None = None) -> None:
    typer.echo(render(rows, fmt, columns, limit))
    if out:
        _export(rows, out)
        typer.echo(f"exported {len(rows)} rows to {out}", err=fmt != "table")


def _export(rows: list[dict], out: Path) -> None:
    try:
        export_rows(rows, list(rows[0]) if rows else ["image_id"], out)
    except ValueError as err:
        fail(str(err))


def with_paths(catalog: Store, rows: list[dict]) -> list[dict]:
    """Rows with each image's source paths (``path``: the first, ``sources``: all) and a short ``image``."""
    sources = catalog.sources_of(r["image_id"] for r in rows)
    return [{**r, "image": r["image_id"][:12], "path": (sources.get(r["image_id"]) or [None])[0],
             "sources": sources.get(r["image_id"], [])} for r in rows]


def with_predictions(catalog: Store, cluster_run: str, rows: list[dict]) -> list[dict]:
    """Cluster members with their given ``label`` and ``predicted`` label, from the predictions that the
    clusters of ``cluster_run`` were made from (those of the run's own infer stage when its catalog rows
    do not say)."""
    stage = next(s for s in catalog.get_run(cluster_run)["stages"] if s["stage"] == "cluster")
    clusters = catalog.get_version("clusters", (stage["outputs"] or {}).get("version")) or {"info": {}}
    made_from = catalog.get_version("predictions", clusters["info"].get("predictions_version"))
    predictions_run = catalog.results_run(made_from["run_id"] if made_from else cluster_run, "infer")
    found = catalog.results_by_image("predictions", predictions_run, (r["image_id"] for r in rows))
    return [{**r, "label": found.get(r["image_id"], {}).get("label"),
             "predicted": found.get(r["image_id"], {}).get("predicted")} for r in rows]


def runs(store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt,
         limit: int = typer.Option(20, "--limit", min=1, help="how many, newest first"),
         fmt: str = FormatOpt) -> None:
    """List runs, newest first.

    Example: fusion runs --format json | jq -r '.[] | select(.status == "failed") | .run_id'
    """
    check_format(fmt)
    catalog = open_store(config, store, sets)
    rows = [{"run_id": r["run_id"], "flow": r["flow"], "status": r["status"], "started_at": r["started_at"],
             "finished_at": r["finished_at"],
             "seconds": round((r["finished_at"] - r["started_at"]).total_seconds()) if r["finished_at"] else None,
             "error": (r["summary"] or {}).get("error")} for r in catalog.list_runs(limit)]
    if not rows and fmt == "table":
        typer.echo(f"no runs in {catalog.root}")
        return
    typer.echo(render(rows, fmt, ["run_id", "flow", "status", "started_at", "seconds"], limit))


def show(run_id: str = typer.Argument("latest", help="run id or latest", autocompletion=complete_run),
         store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
         sets: list[str] = SetOpt, fmt: str = FormatOpt) -> None:
    """Show what a run did: stages, counts, metrics; its Ray dashboard or report.

    Example: fusion show latest --format json | jq '.stages[] | {stage, status}'
    """
    check_format(fmt)
    catalog = open_store(config, store, sets)
    run_row = find_run(catalog, run_id)
    if fmt == "table":
        typer.echo(describe_run(run_row, catalog))
    elif fmt == "json":
        typer.echo(as_json(run_row))
    else:
        typer.echo(render([{**s, "run_id": run_row["run_id"]} for s in run_row["stages"]], fmt, [], None))


def predictions(run: str = RunOpt,
                label: Optional[str] = typer.Option(None, "--label", help="only images given this label",
                                                    autocompletion=complete_label),
                predicted: Optional[str] = typer.Option(None, "--predicted", help="only images predicted as this",
                                                        autocompletion=complete_label),
                wrong: bool = typer.Option(False, "--wrong", help="only labelled images predicted as another label"),
                min_confidence: float = typer.Option(0.0, "--min-confidence", min=0.0, max=1.0),
                sort: str = typer.Option("confidence", "--sort", autocompletion=complete_from(*PREDICTION_ORDERS),
                                         help="confidence (most confident first), uncertain (least first), "
                                              "label or predicted"),
                path: Optional[str] = PathOpt, out: Optional[Path] = OutOpt, limit: Optional[int] = LimitOpt,
                store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
                sets: list[str] = SetOpt, fmt: str = FormatOpt) -> None:
    """A run's predictions with each image's source path, most confident first.

    Example: fusion predictions --label cat --wrong --path '*/2024/*' --format json | jq -r '.[].path'
    """
    check_format(fmt)
    if sort not in PREDICTION_ORDERS:
        fail(f"--sort {sort!r}: choose {', '.join(PREDICTION_ORDERS)}")
    catalog = open_store(config, store, sets)
    source_run = catalog.results_run(find_run(catalog, run, "infer")["run_id"], "infer")
    given = catalog.distinct_results("predictions", source_run, "label")
    require_known("--label", label, given, f"the given labels of run {source_run}")
    require_known("--predicted", predicted, sorted(set(given) | set(catalog.distinct_results(
        "predictions", source_run, "predicted"))), f"the labels of run {source_run}")
    equal = {column: value for column, value in (("label", label), ("predicted", predicted)) if value}
    rows = catalog.select_results("predictions", source_run, equal=equal, at_least={"confidence": min_confidence},
                                  differ=("label", "predicted") if wrong else None, path_glob=path,
                                  order_by=PREDICTION_ORDERS[sort], limit=None if out or fmt == "table" else limit)
    columns = ["path", "label", "predicted", "confidence", "top_k", "split", "model_version", "image"]
    print_rows(with_paths(catalog, rows), fmt, columns, limit, out)


def clusters(run: str = RunOpt,
             members: bool = typer.Option(False, "--members", help="list the images of each cluster, not the "
                                                                    "clusters"),
             cluster: Optional[int] = typer.Option(None, "--cluster", help="only this cluster's images (implies "
                                                                           "--members)"),
             path: Optional[str] = PathOpt, out: Optional[Path] = OutOpt, limit: Optional[int] = LimitOpt,
             store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
             sets: list[str] = SetOpt, fmt: str = FormatOpt) -> None:
    """A run's clusters, or (--members) their images with source paths.

    --out exports every image's cluster, distance and source paths.

    Example: fusion clusters --run latest --cluster 3 --format csv > cluster-3.csv
    """
    check_format(fmt)
    catalog = open_store(config, store, sets)
    source_run = catalog.results_run(find_run(catalog, run, "cluster")["run_id"], "cluster")
    require_known("--cluster", cluster, catalog.distinct_results("cluster_summaries", source_run, "cluster"),
                  f"the clusters of run {source_run}")
    if members or cluster is not None or path:
        rows = catalog.select_results("cluster_assignments", source_run,
                                      equal={"cluster": cluster} if cluster is not None else {}, path_glob=path,
                                      order_by=("cluster", "distance", "image_id"),
                                      limit=None if out or fmt == "table" else limit)
        shown = len(rows) if out or fmt != "table" else (limit or TABLE_ROWS)  # a table looks up what it shows
        rows = with_predictions(catalog, source_run, with_paths(catalog, rows[:shown])) + rows[shown:]
        print_rows(rows, fmt, ["cluster", "distance", "label", "predicted", "path", "image"], limit, out)
        return
    rows = catalog.select_results("cluster_summaries", source_run, order_by=("cluster",))
    print_rows(rows, fmt, ["cluster", "size", "top_label", "purity"], limit or len(rows) or None)
    if out:  # every image's assignment
        assignments = with_paths(catalog, catalog.select_results("cluster_assignments", source_run,
                                                                  order_by=("image_id",)))
        _export(assignments, out)
        typer.echo(f"exported {len(assignments)} assignments to {out}", err=fmt != "table")


def images(label: Optional[str] = typer.Option(None, "--label", help="only this label", autocompletion=complete_label),
           split: Optional[str] = typer.Option(None, "--split", help="only this split: train, val or test",
                                               autocompletion=complete_from(*SPLITS)),
           imputed: bool = typer.Option(False, "--imputed", help="only images with missing pixels (imputed by "
                                                                  "preprocess)"),
           path: Optional[str] = PathOpt,
           version: Optional[int] = typer.Option(None, "--images-version", help="images dataset version "
                                                                                 "(default: the latest)"),
           limit: Optional[int] = LimitOpt, store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
           sets: list[str] = SetOpt,
           fmt: str = FormatOpt) -> None:
    """List stored images: source paths, label, split, size, missing pixels.

    Example: fusion images --label cat --split test --imputed --format json | jq -r '.[].path'
    """
    import itertools

    from fusion_core.learning.scoring import labels_of
    from fusion_core.tools.browse import list_images
    from fusion_core.tools.inputs import input_version

    check_format(fmt)
    catalog = open_store(config, store, sets)
    try:
        dataset = catalog.require_version("images", input_version(catalog, "fusion images", "images", version))
    except LookupError as err:
        fail(str(err), 1)
    require_known("--split", split, list(SPLITS), "the splits")
    require_known("--label", label, labels_of(catalog, [s["path"] for s in dataset["shards"]]),
                  f"the labels of images v{dataset['version']}")
    found = list_images(catalog, dataset, label, split, imputed, path)
    if fmt == "table":  # the first rows, and a count of all
        shown = list(itertools.islice(found, limit or TABLE_ROWS))
        total = len(shown) + sum(1 for _ in found)
        rows = [{**r, "size": f"{r['height']}x{r['width']}x{r['channels']}", "image": r["image_id"][:12]}
                for r in shown]
        typer.echo("\n".join(table_lines(rows, ["path", "label", "split", "size", "missing", "image"], len(rows))[:-1]))
        typer.echo(f"({total} images in images v{dataset['version']}"
                   + (f", first {len(rows)} shown)" if total > len(rows) else ")"))
    else:
        typer.echo(render(list(itertools.islice(found, limit)), fmt, [], None))


def export(out: Path = typer.Argument(..., help="a new or empty folder"), run: str = RunOpt,
           by: str = typer.Option("predicted", "--by", help="group by predicted label or cluster",
                                  autocompletion=complete_from(*GROUPS)),
           copy: bool = typer.Option(False, "--copy", help="write the stored images as PNG files instead of "
                                                           "linking to the source files"),
           store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Write a folder tree of images grouped by predicted label or cluster.

    Each image links to its source file; one that is no local file (an archive member, an object-store URI),
    or with --copy every one, is written as a PNG file.

    Example: fusion export ./by-label --run latest, or fusion export ./by-cluster --run latest --by cluster
    """
    from fusion_core.tools.browse import export_tree
    from fusion_core.tools.inputs import input_version

    if by not in GROUPS:
        fail(f"--by {by!r}: choose {' or '.join(GROUPS)}")
    catalog = open_store(config, store, sets)
    stage = GROUPS[by][2]
    source_run = catalog.results_run(find_run(catalog, run, stage)["run_id"], stage)
    try:
        images = catalog.require_version("images", input_version(catalog, "fusion export", "images"))
        counts = export_tree(catalog, source_run, by, out, images, copy)
    except (LookupError, ValueError) as err:
        fail(str(err), 1 if isinstance(err, LookupError) else 2)
    typer.echo(f"exported {counts['images']} images into {counts['groups']} folders under {out} "
               f"({counts['linked']} linked, {counts['written']} written as PNG)")


def image(ref: str = typer.Argument(..., help="an image id, a prefix of one (6+ characters) or a source path"),
          store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt,
          fmt: str = typer.Option("table", "--format", "-f", help="table or json",
                                  autocompletion=complete_from("table", "json"))) -> None:
    """Where an image came from and what every run made of it (its lineage).

    Example: fusion image photos/cat.jpg, or fusion image 3fa2c1 --format json | jq '.predictions[0]'
    """
    from fusion_core.tools.lineage import image_lineage

    if fmt not in ("table", "json"):
        fail(f"--format {fmt!r}: choose table, json")
    catalog = open_store(config, store, sets)
    ids = image_ids(catalog, ref)
    if not ids:
        fail(f"no stored image {ref!r} (an id, a prefix of 6+ characters, or a source path)", 1)
    if len(ids) > 1:
        fail(f"{ref!r} names {len(ids)} images ({', '.join(i[:12] for i in ids[:5])}"
             f"{', ...' if len(ids) > 5 else ''}); give more of the id")
    found = image_lineage(catalog, ids[0])
    if fmt == "json":
        typer.echo(as_json(found))
        return
    stored = found["stored"]
    lines = [f"image {found['image_id']}", f"  sources      {', '.join(found['sources']) or '-'}",
             "  stored       " + (f"images v{stored['images_version']} ({stored['shard']}): label {stored['label']}, "
                                  f"split {stored['split']}, {stored['size']}, {stored['missing']:.1%} missing"
                                  if stored else "not in the newest images version")]
    decision = found["decision"]
    if decision:
        lines.append(f"  decision     {decision['action']}" + (f" as {decision['label']}" if decision["label"] else "")
                     + f" by {decision['actor']} at {decision['decided_at']:%Y-%m-%d %H:%M}")
    for part, columns in (("predictions", ["run_id", "model_version", "label", "predicted", "confidence", "split"]),
                          ("clusters", ["run_id", "cluster", "distance"]),
                          ("findings", ["run_id", "kind", "score", "duplicate_set", "suggested", "flags"])):
        rows = [{c: r.get(c) for c in columns} for r in found[part]]
        lines += [f"  {part} (newest run first)"] + [f"    {line}" for line in table_lines(rows, columns, len(rows))]
    typer.echo("\n".join(lines))
