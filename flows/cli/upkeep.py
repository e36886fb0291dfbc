"""The ``fusion`` commands that look after a store: ``gc``, ``fsck`` and ``backup``."""

from __future__ import annotations

from typing import Optional

import typer

from flows.cli.app import ConfigOpt, SetOpt, StoreOpt, fail, open_store


def gc(keep: int = typer.Option(..., "--keep", min=1, help="how many of the newest runs to keep, with all they need"),
       dry_run: bool = typer.Option(False, "--dry-run", help="only say what would be removed"),
       store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Remove what no kept run or the champion needs: old versions, results, reports.

    Example: fusion gc --keep 30 --dry-run
    """
    from fusion_core.tools.retention import collect_garbage

    removed = collect_garbage(open_store(config, store, sets), keep, dry_run=dry_run)
    typer.echo(("would remove: " if dry_run else "removed: ")
               + ", ".join(f"{k}={v}" for k, v in removed.items() if k != "runs_kept")
               + f" (kept the {removed['runs_kept']} newest runs and what they need)")


def fsck(repair: bool = typer.Option(False, "--repair", help="move orphan files (never committed data) into "
                                                             "lost+found/<date>/, record missing checksums, close "
                                                             "abandoned runs"),
         empty_lost_found: bool = typer.Option(False, "--empty-lost-found",
                                               help="delete what earlier repairs moved into lost+found/"),
         store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Check the store against its catalog; --repair moves orphans to lost+found/.

    Shards (present, rows, checksum, schema), models, reports and result rows are checked and orphan files
    listed. Nothing a catalog row names is ever an orphan. Exit code 0 when consistent, 1 otherwise.

    Example: fusion fsck --store ./store && fusion fsck --store ./store --repair
    """
    from fusion_core.tools.fsck import LOST_FOUND, check_store
    from fusion_core.tools.fsck import empty_lost_found as empty

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


def backup(dest: str = typer.Argument(..., help="a new folder for the copy"),
           store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Copy the store to a new folder; safe while a run writes to it.

    The SQLite catalog is copied through SQLite's online backup (one committed state), then the files. Copy a
    PostgreSQL catalog with pg_dump. The copy is a whole store: open it with --store DEST.

    Example: fusion backup /backups/fusion-$(date +%F) --store ./store
    """
    from fusion_core.tools.backup import copy_store

    catalog = open_store(config, store, sets)
    try:
        target = copy_store(catalog, dest)
    except (ValueError, FileExistsError) as err:
        fail(str(err))
    kept = "" if catalog.engine.dialect.name == "sqlite" else " (files only: copy the PostgreSQL catalog with pg_dump)"
    typer.echo(f"copied the store to {target}{kept}")
