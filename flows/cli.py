"""The ``fusion`` command: demo, ad hoc flow runs, the nightly schedule, and what runs did."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from functools import partial
from pathlib import Path
from typing import Optional

import typer

from flows.terminal import describe_run, export_rows, table_lines
from fusion_core.config import ConfigError, Settings, load_settings, parse_overrides
from fusion_core.errors import one_line
from fusion_core.inputs import STAGE_INPUTS, check_inputs
from fusion_core.store import Store, StoreBusyError, StoreReadOnlyError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fusion: mine image collections - ingest, impute, train, infer, cluster.")

FLOWS = ("ingest", "preprocess", "drift", "train", "infer", "cluster", "nightly")
NIGHTLY_CRON = "0 2 * * *"
SOURCE_HELP = "folder, tar/zip archive, CIFAR batch folder, CSV/Parquet manifest, or a URI of one"

ConfigOpt = typer.Option(None, "--config", "-c", help="profile name (smoke, local, cluster) or YAML file")
StoreOpt = typer.Option(None, "--store", help="store root (folder or object-store URI)")
SetOpt = typer.Option([], "--set", help="override a setting: SECTION.KEY=VALUE (repeatable)")
state = {"debug": False}  # set by the --debug option


def _overrides(store: str | None, sets: list[str]) -> dict:
    overrides = parse_overrides(sets)
    if store:
        overrides["store.root"] = store
    return overrides


def _open_store(config: str | None, store: str | None) -> Store:
    """The store named by ``--store`` (or the config's ``store.root``)."""
    try:
        return Store.from_settings(load_settings(config, _overrides(store, [])))
    except ConfigError as err:
        _fail(str(err))


def _setup_logging() -> None:
    """Warnings, and Fusion's INFO lines, on stderr; tracebacks only with --debug (Prefect's API keeps them)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    if not state["debug"]:
        handler.addFilter(_without_traceback)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("fusion_core").setLevel(logging.INFO)


def _without_traceback(record: logging.LogRecord) -> bool:
    """Keep the line, drop its traceback (this handler comes after Prefect's API handler)."""
    record.exc_info = record.exc_text = None
    return True


@app.callback()
def _environment(debug: bool = typer.Option(False, "--debug", help="show full tracebacks of errors")) -> None:
    """Quiet defaults for local runs; any value already set in the environment wins."""
    state["debug"] = debug
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _run_flow(name: str, source: str | None, config: str | None, overrides: dict) -> dict:
    """Run a flow here; a failure ends the command with one line (and the traceback with --debug)."""
    settings = load_settings(config, overrides)  # fail fast on a bad config, before Prefect starts
    _check_writable(name, settings)
    if name in STAGE_INPUTS:
        _check_inputs(name, settings)
    from flows import cluster, drift, infer, ingest, nightly, preprocess, train

    if name in ("ingest", "nightly"):
        if not source:
            _fail(f"fusion run {name}: --source is required")
        fn = partial({"ingest": ingest.ingest_flow, "nightly": nightly.nightly_flow}[name], source=_source(source))
    else:
        fn = {"preprocess": preprocess.preprocess_flow, "drift": drift.drift_flow, "train": train.train_flow,
              "infer": infer.infer_flow, "cluster": cluster.cluster_flow}[name]
    try:
        return fn(config=config, overrides=overrides)
    except Exception as err:
        _run_failed(name, err)


def _check_writable(name: str, settings: Settings) -> None:
    """Before Prefect starts: refuse a store whose root or catalog cannot be written, or reached, or that
    another run is writing to."""
    try:
        store = Store.from_settings(settings)
        store.check_writable()
        store.check_not_busy()
    except (StoreReadOnlyError, StoreBusyError) as err:
        _fail(str(err))
    except OSError as err:  # a new store's root cannot even be created
        _fail(f"the store root {settings.store.root} cannot be created: {one_line(err)}")
    except Exception as err:  # e.g. an unreachable catalog database
        _run_failed(name, err)


def _check_inputs(name: str, settings: Settings) -> None:
    """Before Prefect starts: fail when the stage has nothing to work on, naming the stage to run first."""
    try:
        check_inputs(settings, Store.from_settings(settings), name)
    except LookupError as err:
        _fail(str(err))
    except Exception as err:  # e.g. an unreachable catalog database
        _run_failed(name, err)


def _run_failed(name: str, err: Exception) -> None:
    """End the command with one line, exit code 1; the run is recorded as failed (store and Prefect)."""
    if state["debug"]:
        traceback.print_exception(err)
    typer.secho(f"fusion run {name} failed: {one_line(err)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _source(source: str) -> str:
    """A URI as given, or an existing local path made absolute; anything else is refused."""
    if "://" in source:
        return source
    if not Path(source).exists():
        _fail(f"source {source!r} does not exist")
    return str(Path(source).resolve())


def _print_run(run_id: str, config: str | None, overrides: dict) -> None:
    catalog = Store.from_settings(load_settings(config, overrides))
    typer.echo("\n" + describe_run(catalog.get_run(run_id), catalog))


@app.command()
def demo(config: Optional[str] = ConfigOpt, store: Optional[str] = StoreOpt,
         sets: list[str] = SetOpt) -> None:
    """Generate the demo image set and run the nightly flow on it."""
    from fusion_core.demo_data import generate_demo_images

    _setup_logging()
    try:
        overrides = _overrides(store, sets)
        settings = load_settings(config, overrides)
    except ConfigError as err:
        _fail(str(err))
    made = generate_demo_images(settings.demo.source, per_class=settings.demo.per_class, seed=settings.demo.seed)
    typer.echo(f"demo data: {made.images} images ({made.with_missing} with missing pixels, "
               f"{made.corrupt} corrupt files) in {Path(made.root).resolve()}")
    result = _run_flow("nightly", settings.demo.source, config, overrides)
    _print_run(result["run_id"], config, overrides)


@app.command()
def run(flow: str = typer.Argument(..., help=f"one of: {', '.join(FLOWS)}"),
        source: Optional[str] = typer.Option(None, "--source", help=SOURCE_HELP + " (ingest, nightly)"),
        config: Optional[str] = ConfigOpt, store: Optional[str] = StoreOpt,
        sets: list[str] = SetOpt,
        workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers (train.num_workers)"),
        gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="train and infer on GPUs (train.use_gpu)"),
        ) -> None:
    """Run one flow now, locally or on the Ray cluster at RAY_ADDRESS / ray.address."""
    if flow not in FLOWS:
        _fail(f"unknown flow {flow!r}; choose one of: {', '.join(FLOWS)}")
    _setup_logging()
    try:
        overrides = _overrides(store, sets)
        if workers is not None:
            overrides["train.num_workers"] = workers
        if gpu is not None:
            overrides["train.use_gpu"] = gpu
        result = _run_flow(flow, source, config, overrides)
    except ConfigError as err:
        _fail(str(err))
    _print_run(result["run_id"], config, overrides)


@app.command()
def serve(source: str = typer.Option(..., "--source", help=SOURCE_HELP),
          config: Optional[str] = ConfigOpt, store: Optional[str] = StoreOpt,
          sets: list[str] = SetOpt, cron: str = typer.Option(NIGHTLY_CRON, help="cron schedule (UTC)"),
          port: int = typer.Option(4200, help="port of the local Prefect server started when PREFECT_API_URL is unset")
          ) -> None:
    """Serve the nightly flow on its cron schedule until stopped.

    Scheduling needs a Prefect server: the one at PREFECT_API_URL, or else a local one started here.
    """
    _setup_logging()
    overrides = _overrides(store, sets)
    try:
        load_settings(config, overrides)
    except ConfigError as err:
        _fail(str(err))
    server = None if os.environ.get("PREFECT_API_URL") else _start_prefect_server(port)
    try:
        from flows.nightly import nightly_flow

        nightly_flow.serve(name="nightly", cron=cron,
                           parameters={"source": _source(source), "config": config,
                                       "overrides": overrides})
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def _die_with_parent() -> None:
    """In a child process: be sent SIGTERM when the parent exits (Linux), however it exits."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_prefect_server(port: int):
    """Start `prefect server start` on loopback, wait until healthy, and point this process at it."""
    import subprocess
    import time
    import urllib.request

    url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).with_name("prefect")
    typer.echo(f"starting a local Prefect server at {url} (set PREFECT_API_URL to use another)")
    server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                os.environ["PREFECT_API_URL"] = url
                return server
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(1)
    server.terminate()
    _fail(f"could not start a Prefect server on port {port}; is it in use? Try --port.")


@app.command()
def runs(store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
         limit: int = typer.Option(20, help="how many, newest first")) -> None:
    """List runs, newest first."""
    catalog = _open_store(config, store)
    rows = catalog.list_runs(limit)
    if not rows:
        typer.echo(f"no runs in {catalog.root}")
        return
    typer.echo(f"{'run id':<24} {'flow':<11} {'status':<10} {'started (UTC)':<20} seconds")
    for r in rows:
        took = f"{(r['finished_at'] - r['started_at']).total_seconds():.0f}" if r["finished_at"] else "-"
        typer.echo(f"{r['run_id']:<24} {r['flow']:<11} {r['status']:<10} {r['started_at']:%Y-%m-%d %H:%M:%S}  {took}")


@app.command()
def show(run_id: str, store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt) -> None:
    """Show what a run did: each stage with its counts, metrics and outputs."""
    catalog = _open_store(config, store)
    run_row = catalog.get_run(run_id)
    if run_row is None:
        _fail(f"no run {run_id!r} in {catalog.root}; see `fusion runs`")
    typer.echo(describe_run(run_row, catalog))


@app.command()
def models(action: str = typer.Argument("list", help="list, history, promote, rollback or compare"),
           versions: Optional[list[int]] = typer.Argument(None, help="promote V; rollback [V] (default: the "
                                                                      "previous champion); compare A B"),
           force: bool = typer.Option(False, "--force", help="promote even if the gate says no (needs --reason)"),
           reason: Optional[str] = typer.Option(None, "--reason", help="why, recorded with the promotion"),
           pixels: Optional[int] = typer.Option(None, "--pixels", help="compare: the pixels version whose holdout "
                                                                       "scores both (default: B's training data)"),
           store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt) -> None:
    """List model versions, their promotions; promote or roll back the champion; compare two models."""
    catalog = _open_store(config, store)
    versions = versions or []
    for version in versions:
        if catalog.get_model(version) is None:
            _fail(f"fusion models {action}: no model version {version}; see `fusion models`")
    if action == "compare":
        if len(versions) != 2:
            _fail("fusion models compare: name two model versions, e.g. `fusion models compare 3 4`")
        _compare_models(catalog, *versions, pixels)
        return
    if action in ("promote", "rollback"):
        _change_champion(catalog, action, versions[0] if versions else None, force, reason, config, store)
    elif action == "history":
        for p in catalog.promotion_history():
            was = f"v{p['previous']}" if p["previous"] else "-"
            typer.echo(f"{p['at']:%Y-%m-%d %H:%M} v{p['version']:<4} (was {was:<5}) "
                       f"{'forced ' if p['forced'] else ''}by {p['actor']}: {p['reason']}")
        return
    elif action != "list":
        _fail(f"fusion models: unknown action {action!r}; choose list, history, promote, rollback or compare")
    typer.echo(f"{'version':<8} {'stage':<11} {'name':<10} {'accuracy':<9} {'macro_f1':<9} {'ece':<7} "
               f"{'data':<5} {'code':<24} run")
    for m in catalog.list_models():
        ece = m["metrics"].get("ece")
        typer.echo(f"{m['version']:<8} {m['stage']:<11} {m['name']:<10} {m['metrics']['accuracy']:<9.4f} "
                   f"{m['metrics']['macro_f1']:<9.4f} {'-' if ece is None else f'{ece:.4f}':<7} "
                   f"v{m['dataset_version']:<4} {m['config'].get('code_version', '-'):<24} {m['run_id']}")


def _change_champion(catalog: Store, action: str, version: int | None, force: bool, reason: str | None,
                     config: str | None, store: str | None) -> None:
    """``promote V``: through the gate, or past it with ``--force --reason``; ``rollback``: to an earlier champion."""
    import getpass

    from fusion_core.registry import promotion_decision, rollback_version

    champion = catalog.champion()
    if version is None and action == "rollback":
        version = rollback_version(catalog.list_models(), champion)
    if version is None:
        _fail(f"fusion models {action}: no earlier champion to roll back to; name a version")
    if force and not reason:
        _fail(f"fusion models {action}: --force needs --reason \"why\" (it is recorded)")
    if action == "promote" and not force:
        train = load_settings(config, _overrides(store, [])).train
        ok, why = promotion_decision(catalog.get_model(version), champion, train.promote_margin, train.promote_alpha)
        if not ok:
            _fail(f"model v{version} not promoted: {why}; `--force --reason ...` promotes it anyway")
        reason = why if not reason else f"{why}; {reason}"
    forced = force or action == "rollback"
    catalog.set_champion(version, reason=reason or f"{action} by hand", actor=getpass.getuser(), forced=forced)
    typer.echo(f"model v{version} is now champion"
               + (f" (was v{champion['version']})" if champion and champion["version"] != version else ""))


def _compare_models(catalog: Store, a: int, b: int, pixels_version: int | None) -> None:
    """Both models scored on the same holdout, overall and per class, with McNemar's test."""
    from fusion_core.scoring import compare_models

    model_a, model_b = catalog.get_model(a), catalog.get_model(b)
    pixels = catalog.get_version("pixels", pixels_version or model_b["dataset_version"])
    if pixels is None:
        _fail(f"fusion models compare: pixels v{pixels_version or model_b['dataset_version']} is not in the store; "
              f"name one with --pixels")
    try:
        result = compare_models(catalog, model_a, model_b, pixels)
    except ValueError as err:
        _fail(str(err))
    typer.echo(f"models v{a} and v{b} on the test split of pixels v{result['pixels_version']} "
               f"({result['a']['n']} images)")
    rows = [{"metric": name, f"v{a}": result["a"][name], f"v{b}": result["b"][name]}
            for name in ("accuracy", "macro_f1", "ece")]
    rows += [{"metric": f"f1 {c}", f"v{a}": result["a"]["per_class_f1"][c], f"v{b}": result["b"]["per_class_f1"][c]}
             for c in result["classes"]]
    typer.echo("\n".join(table_lines(rows, ["metric", f"v{a}", f"v{b}"], len(rows))))
    typer.echo(f"McNemar: v{b} alone right on {result['challenger_only']}, v{a} alone right on "
               f"{result['champion_only']}; p={result['p_value']:.3g} (one-sided, v{b} better)")


OutOpt = typer.Option(None, "--out", help="also export all matching rows to a .csv or .parquet file")


def _print_rows(rows: list[dict], columns: list[str], limit: int, out: Path | None) -> None:
    typer.echo("\n".join(table_lines(rows, columns, limit)))
    if out:
        _export(rows, columns, out)
        typer.echo(f"exported {len(rows)} rows to {out}")


def _export(rows: list[dict], columns: list[str], out: Path) -> None:
    try:
        export_rows(rows, columns, out)
    except ValueError as err:
        _fail(str(err))


@app.command()
def predictions(run: str = typer.Option(..., "--run", help="run id (see `fusion runs`)"),
                label: Optional[str] = typer.Option(None, "--label", help="only this predicted label"),
                min_confidence: float = typer.Option(0.0, "--min-confidence", min=0.0, max=1.0),
                out: Optional[Path] = OutOpt, limit: int = typer.Option(20, help="rows to print"),
                store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt) -> None:
    """Print (and export) a run's predictions."""
    catalog = _open_store(config, store)
    filters = {"predicted": label} if label else {}
    rows = [r for r in catalog.query("predictions", catalog.results_run(run, "infer"), **filters)
            if r["confidence"] >= min_confidence]
    rows.sort(key=lambda r: -r["confidence"])
    _print_rows(rows, ["image_id", "label", "predicted", "confidence", "top_k", "split", "model_version"], limit, out)


@app.command()
def clusters(run: str = typer.Option(..., "--run", help="run id (see `fusion runs`)"),
             out: Optional[Path] = OutOpt, store: Optional[str] = StoreOpt,
             config: Optional[str] = ConfigOpt) -> None:
    """Print a run's cluster summaries; --out exports every image's cluster assignment."""
    catalog = _open_store(config, store)
    source_run = catalog.results_run(run, "cluster")
    summaries = sorted(catalog.query("cluster_summaries", source_run), key=lambda r: r["cluster"])
    _print_rows(summaries, ["cluster", "size", "top_label", "purity"], len(summaries), None)
    if out:
        assignments = sorted(catalog.query("cluster_assignments", source_run), key=lambda r: r["image_id"])
        _export(assignments, ["image_id", "cluster", "distance"], out)
        typer.echo(f"exported {len(assignments)} assignments to {out}")


@app.command()
def gc(keep: int = typer.Option(..., "--keep", min=1, help="how many of the newest runs to keep, with all they need"),
       dry_run: bool = typer.Option(False, "--dry-run", help="only say what would be removed"),
       store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt) -> None:
    """Remove old dataset versions, result rows, reports and checkpoints no kept run or the champion needs."""
    from fusion_core.retention import collect_garbage

    removed = collect_garbage(_open_store(config, store), keep, dry_run=dry_run)
    typer.echo(("would remove: " if dry_run else "removed: ")
               + ", ".join(f"{k}={v}" for k, v in removed.items() if k != "runs_kept")
               + f" (kept the {removed['runs_kept']} newest runs and what they need)")


@app.command()
def fsck(repair: bool = typer.Option(False, "--repair", help="remove orphan files (never committed data), record "
                                                             "missing checksums, close abandoned runs"),
         store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt) -> None:
    """Check the store against its catalog: shards (present, rows, checksum, schema), models, reports and result
    rows; list orphan files. Exit code 0 when consistent, 1 otherwise.

    Example: fusion fsck --store ./store && fusion fsck --store ./store --repair
    """
    from fusion_core.fsck import check_store

    catalog = _open_store(config, store)
    try:
        result = check_store(catalog, repair=repair)
    except RuntimeError as err:
        _fail(str(err))
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
def report(run_id: str, store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt) -> None:
    """Write the HTML report of an existing run under the store and print its path."""
    from fusion_core.report import write_report

    _setup_logging()
    settings = load_settings(config, _overrides(store, []))
    try:
        result = write_report(settings, Store.from_settings(settings), run_id)
    except LookupError as err:
        _fail(str(err))
    typer.echo(result.outputs["report"])


@app.command()
def doctor(config: Optional[str] = ConfigOpt, store: Optional[str] = StoreOpt, sets: list[str] = SetOpt,
           fmt: str = typer.Option("text", "--format", help="text or json")) -> None:
    """Check what a run needs: versions, the Prefect server, store root, catalog, Ray and its workers.

    Exit code 0 when no check failed, 1 otherwise.
    """
    import json

    from prefect.settings import get_current_settings

    from fusion_core.doctor import FAIL, WARN, run_checks, summary

    if fmt not in ("text", "json"):
        _fail(f"fusion doctor: unknown --format {fmt!r}; choose text or json")
    try:
        settings = load_settings(config, _overrides(store, sets))
    except ConfigError as err:
        _fail(str(err))
    api = get_current_settings().api
    colors = {FAIL: typer.colors.RED, WARN: typer.colors.YELLOW}
    checks = []
    for check in run_checks(settings, api.url, api.key.get_secret_value() if api.key else None):
        checks.append(check)
        if fmt == "text":
            typer.secho("\n".join(check.lines()), fg=colors.get(check.status, typer.colors.GREEN))
    if fmt == "json":
        typer.echo(json.dumps([vars(c) for c in checks], indent=2))
    else:
        typer.echo(summary(checks))
    raise typer.Exit(1 if any(c.status == FAIL for c in checks) else 0)
