"""The ``fusion`` commands that read an existing store: runs, results, images, models, and its upkeep."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli_app import (ConfigOpt, FormatOpt, LimitOpt, RunOpt, SetOpt, StoreOpt, app, check_format,
                           complete_run, fail, find_run, open_store, settings_for, setup_logging)
from flows.terminal import TABLE_ROWS, as_json, describe_run, export_rows, render, table_lines
from fusion_core.store import Store

OutOpt = typer.Option(None, "--out", help="also export all matching rows to a .csv or .parquet file")
PathOpt = typer.Option(None, "--path", help="only images with a source path matching this glob (* and ?)")


def _print(rows: list[dict], fmt: str, columns: list[str], limit: int | None, out: Path | None = None) -> None:
    typer.echo(render(rows, fmt, columns, limit))
    if out:
        _export(rows, out)
        typer.echo(f"exported {len(rows)} rows to {out}", err=fmt != "table")


def _export(rows: list[dict], out: Path) -> None:
    try:
        export_rows(rows, list(rows[0]) if rows else ["image_id"], out)
    except ValueError as err:
        fail(str(err))


def _with_paths(catalog: Store, rows: list[dict]) -> list[dict]:
    """Rows with each image's source paths (``path``: the first, ``sources``: all) and a short ``image``."""
    sources = catalog.sources_of(r["image_id"] for r in rows)
    return [{**r, "image": r["image_id"][:12], "path": (sources.get(r["image_id"]) or [None])[0],
             "sources": sources.get(r["image_id"], [])} for r in rows]


@app.command()
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


@app.command()
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


@app.command()
def models(action: str = typer.Argument("list", help="list, history, promote, rollback or compare"),
           versions: Optional[list[int]] = typer.Argument(None, help="promote V; rollback [V] (default: the "
                                                                      "previous champion); compare A B"),
           force: bool = typer.Option(False, "--force", help="promote even if the gate says no (needs --reason)"),
           reason: Optional[str] = typer.Option(None, "--reason", help="why, recorded with the promotion"),
           pixels: Optional[int] = typer.Option(None, "--pixels", help="compare: the pixels version whose holdout "
                                                                       "scores both (default: B's training data)"),
           store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
           sets: list[str] = SetOpt, fmt: str = FormatOpt) -> None:
    """List, promote, roll back or compare model versions.

    Example: fusion models compare 3 4, or fusion models --format csv > models.csv
    """
    check_format(fmt)
    catalog = open_store(config, store, sets)
    versions = versions or []
    known = [m["version"] for m in catalog.list_models()]
    for version in versions:
        if version not in known:
            fail(f"fusion models {action}: no model version {version}; "
                 + (f"versions are {known[0]}-{known[-1]}" if known else "no models yet (run train)"), 1)
    if action == "compare":
        if len(versions) != 2:
            fail("fusion models compare: name two model versions, e.g. `fusion models compare 3 4`")
        _compare_models(catalog, *versions, pixels)
    elif action in ("promote", "rollback"):
        _change_champion(catalog, action, versions[0] if versions else None, force, reason, config, store, sets)
    elif action == "history":
        rows = [{**p, "was": f"v{p['previous']}" if p["previous"] else "-"} for p in catalog.promotion_history()]
        typer.echo(render(rows, fmt, ["at", "version", "was", "forced", "actor", "reason"], len(rows) or None))
    elif action == "list":
        rows = [{"version": m["version"], "stage": m["stage"], "name": m["name"],
                 "accuracy": m["metrics"]["accuracy"], "macro_f1": m["metrics"]["macro_f1"],
                 "ece": m["metrics"].get("ece"), "data": m["dataset_version"],
                 "code": m["config"].get("code_version"), "run_id": m["run_id"], "created_at": m["created_at"],
                 "path": m["path"]} for m in catalog.list_models()]
        typer.echo(render(rows, fmt, ["version", "stage", "name", "accuracy", "macro_f1", "ece", "data", "code",
                                      "run_id"], len(rows) or None))
    else:
        fail(f"fusion models: unknown action {action!r}; choose list, history, promote, rollback or compare")


def _change_champion(catalog: Store, action: str, version: int | None, force: bool, reason: str | None,
                     config: str | None, store: str | None, sets: list[str]) -> None:
    """``promote V``: through the gate, or past it with ``--force --reason``; ``rollback``: to an earlier champion."""
    import getpass

    from fusion_core.registry import promotion_decision, rollback_version

    champion = catalog.champion()
    if version is None and action == "rollback":
        version = rollback_version(catalog.list_models(), champion)
    if version is None:
        fail(f"fusion models {action}: no earlier champion to roll back to; name a version", 1)
    if force and not reason:
        fail(f"fusion models {action}: --force needs --reason \"why\" (it is recorded)")
    if action == "promote" and not force:
        train = settings_for(config, store, sets)[0].train
        ok, why = promotion_decision(catalog.get_model(version), champion, train.promote_margin, train.promote_alpha)
        if not ok:
            fail(f"model v{version} not promoted: {why}; `--force --reason ...` promotes it anyway")
        reason = why if not reason else f"{why}; {reason}"
    forced = force or action == "rollback"
    catalog.set_champion(version, reason=reason or f"{action} by hand", actor=getpass.getuser(), forced=forced)
    typer.echo(f"model v{version} is now champion"
               + (f" (was v{champion['version']})" if champion and champion["version"] != version else ""))


def _compare_models(catalog: Store, a: int, b: int, pixels_version: int | None) -> None:
    """Both models scored on the same holdout, overall and per class, with McNemar's test."""
    from fusion_core.scoring import compare_models

    model_a, model_b = catalog.get_model(a), catalog.get_model(b)
    try:
        pixels = catalog.require_version("pixels", pixels_version or model_b["dataset_version"])
    except LookupError as err:
        fail(f"fusion models compare: {err}; name one with --pixels", 1)
    try:
        result = compare_models(catalog, model_a, model_b, pixels)
    except ValueError as err:
        fail(str(err))
    typer.echo(f"models v{a} and v{b} on the test split of pixels v{result['pixels_version']} "
               f"({result['a']['n']} images)")
    rows = [{"metric": name, f"v{a}": result["a"][name], f"v{b}": result["b"][name]}
            for name in ("accuracy", "macro_f1", "ece")]
    rows += [{"metric": f"f1 {c}", f"v{a}": result["a"]["per_class_f1"][c], f"v{b}": result["b"]["per_class_f1"][c]}
             for c in result["classes"]]
    typer.echo("\n".join(table_lines(rows, ["metric", f"v{a}", f"v{b}"], len(rows))))
    typer.echo(f"McNemar: v{b} alone right on {result['challenger_only']}, v{a} alone right on "
               f"{result['champion_only']}; p={result['p_value']:.3g} (one-sided, v{b} better)")


@app.command()
def predictions(run: str = RunOpt,
                label: Optional[str] = typer.Option(None, "--label", help="only this predicted label"),
                min_confidence: float = typer.Option(0.0, "--min-confidence", min=0.0, max=1.0),
                path: Optional[str] = PathOpt, out: Optional[Path] = OutOpt, limit: Optional[int] = LimitOpt,
                store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
                sets: list[str] = SetOpt, fmt: str = FormatOpt) -> None:
    """A run's predictions with each image's source path, most confident first.

    Example: fusion predictions --run latest --label cat --path '*/2024/*' --format json | jq -r '.[].path'
    """
    check_format(fmt)
    catalog = open_store(config, store, sets)
    source_run = catalog.results_run(find_run(catalog, run, "infer")["run_id"], "infer")
    rows = catalog.select_results("predictions", source_run, equal={"predicted": label} if label else {},
                                  at_least={"confidence": min_confidence}, path_glob=path,
                                  order_by=("-confidence", "image_id"), limit=None if out or fmt == "table" else limit)
    columns = ["path", "label", "predicted", "confidence", "top_k", "split", "model_version", "image"]
    _print(_with_paths(catalog, rows), fmt, columns, limit, out)


@app.command()
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
    if members or cluster is not None or path:
        rows = catalog.select_results("cluster_assignments", source_run,
                                      equal={"cluster": cluster} if cluster is not None else {}, path_glob=path,
                                      order_by=("cluster", "distance", "image_id"),
                                      limit=None if out or fmt == "table" else limit)
        _print(_with_paths(catalog, rows), fmt, ["cluster", "distance", "path", "image"], limit, out)
        return
    rows = catalog.select_results("cluster_summaries", source_run, order_by=("cluster",))
    _print(rows, fmt, ["cluster", "size", "top_label", "purity"], limit or len(rows) or None)
    if out:  # every image's assignment
        assignments = _with_paths(catalog, catalog.select_results("cluster_assignments", source_run,
                                                                  order_by=("image_id",)))
        _export(assignments, out)
        typer.echo(f"exported {len(assignments)} assignments to {out}", err=fmt != "table")


@app.command()
def images(label: Optional[str] = typer.Option(None, "--label", help="only this label"),
           split: Optional[str] = typer.Option(None, "--split", help="only this split: train, val or test"),
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

    from fusion_core.browse import list_images
    from fusion_core.inputs import input_version

    check_format(fmt)
    catalog = open_store(config, store, sets)
    try:
        dataset = catalog.require_version("images", input_version(catalog, "fusion images", "images", version))
    except LookupError as err:
        fail(str(err), 1)
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


@app.command()
def export(out: Path = typer.Argument(..., help="a new or empty folder"), run: str = RunOpt,
           by: str = typer.Option("predicted", "--by", help="group by predicted label or cluster"),
           copy: bool = typer.Option(False, "--copy", help="write the stored images as PNG files instead of "
                                                           "linking to the source files"),
           store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Write a folder tree of images grouped by predicted label or cluster.

    Each image links to its source file; one that is no local file (an archive member, an object-store URI),
    or with --copy every one, is written as a PNG file.

    Example: fusion export ./by-label --run latest, or fusion export ./by-cluster --run latest --by cluster
    """
    from fusion_core.browse import GROUPS, export_tree
    from fusion_core.inputs import input_version

    if by not in GROUPS:
        fail(f"fusion export: --by {by!r}; choose {' or '.join(GROUPS)}")
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


@app.command()
def gc(keep: int = typer.Option(..., "--keep", min=1, help="how many of the newest runs to keep, with all they need"),
       dry_run: bool = typer.Option(False, "--dry-run", help="only say what would be removed"),
       store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Remove what no kept run or the champion needs: old versions, results, reports.

    Example: fusion gc --keep 30 --dry-run
    """
    from fusion_core.retention import collect_garbage

    removed = collect_garbage(open_store(config, store, sets), keep, dry_run=dry_run)
    typer.echo(("would remove: " if dry_run else "removed: ")
               + ", ".join(f"{k}={v}" for k, v in removed.items() if k != "runs_kept")
               + f" (kept the {removed['runs_kept']} newest runs and what they need)")


@app.command()
def fsck(repair: bool = typer.Option(False, "--repair", help="move orphan files (never committed data) into "
                                                             "lost+found/<date>/, record missing checksums, close "
                                                             "abandoned runs"),
         empty_lost_found: bool = typer.Option(False, "--empty-lost-found",
                                               help="delete what earlier repairs moved into lost+found/"),
         store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Check the store against its catalog; --repair moves orphan files into lost+found/<date>/.

    Shards (present, rows, checksum, schema), models, reports and result rows are checked and orphan files
    listed. Nothing a catalog row names is ever an orphan. Exit code 0 when consistent, 1 otherwise.

    Example: fusion fsck --store ./store && fusion fsck --store ./store --repair
    """
    from fusion_core.fsck import LOST_FOUND, check_store
    from fusion_core.fsck import empty_lost_found as empty

    catalog = open_store(config, store, sets)
    if empty_lost_found:
        typer.echo(f"deleted {len(empty(catalog))} files from {catalog.path(LOST_FOUND)}")
    try:
        result = check_store(catalog, repair=repair)
    except RuntimeError as err:
        fail(str(err))
    for finding in result.findings:
        typer.secho(f"{finding.kind:<9} {finding.path}: {finding.detail}",
                    fg=typer.colors.RED if finding.is_error else typer.colors.YELLOW)
    for run_id in result.abandoned:
        typer.echo(f"abandoned run {run_id}: its process died; its resumable work is left for the next run")
    if result.live_runs and result.orphans and not repair:
        typer.echo(f"run {result.live_runs[0]} is live: some orphans may be its files, not committed yet")
    typer.secho(result.summary(), fg=typer.colors.RED if result.errors else typer.colors.GREEN)
    raise typer.Exit(1 if result.errors else 0)


@app.command()
def report(run_id: str = typer.Argument("latest", help="run id or latest", autocompletion=complete_run),
           store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Write a run's HTML report and print its path (`fusion run report` does it in Prefect).

    Example: xdg-open "$(fusion report latest)"
    """
    from fusion_core.report import write_report

    setup_logging()
    settings, _ = settings_for(config, store, sets)
    catalog = open_store(config, store, sets)
    try:
        result = write_report(settings, catalog, find_run(catalog, run_id)["run_id"])
    except LookupError as err:
        fail(str(err), 1)
    typer.echo(result.outputs["report"])
