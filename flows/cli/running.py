"""The ``fusion`` commands that run: the demo, ad hoc flow runs (``run``, ``report``), the nightly schedule,
and the doctor."""

from __future__ import annotations

import logging
import os
import traceback
from functools import partial
from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import (ERROR_PREFIX, FLOWS, ConfigOpt, SetOpt, StoreOpt, complete_from, complete_run, fail,
                           find_run, settings_for, setup_logging, state)
from flows.prefect_server import ServerStartError, prefect_api, start_server, stop_server
from flows.terminal import describe_run
from fusion_core import uri
from fusion_core.config import Settings
from fusion_core.errors import one_line
from fusion_core.store import Store, StoreBusyError, StoreNotFoundError, StoreReadOnlyError
from fusion_core.tools.inputs import STAGE_INPUTS, check_inputs

NIGHTLY_CRON = "0 2 * * *"
NO_RAY = ("cluster", "report")  # the flows that run in this process alone
SOURCE_HELP = "folder, tar/zip archive, CIFAR batch folder, CSV/Parquet manifest, or a URI of one"


def _run_flow(name: str, source: str | None, settings: Settings, config: str | None, overrides: dict,
              report_run: str | None = None) -> dict:
    """Run a flow here after checking what it needs, before Prefect is imported: its source, a store that
    takes writes (and, but for ingest and nightly, exists) and the stage's input. A failure ends the command
    with one line (and the traceback with --debug)."""
    if name in ("ingest", "nightly"):
        if not source:
            fail(f"run {name}: --source is required")
        source = _source(source)
    store = _writable_store(name, settings)
    if name in STAGE_INPUTS:
        _check_inputs(name, settings, store)
    if name == "report":
        report_run = find_run(store, report_run or "latest")["run_id"]
    flow = []

    def while_prefect_starts() -> None:  # the flow's imports, and Ray for the flows that use it
        flow.append(_flow(name, source, report_run))
        if name not in NO_RAY:
            from fusion_core.ray_runtime import ensure_ray

            ensure_ray(settings)

    try:
        with prefect_api(settings.orchestration.server_startup_timeout, while_prefect_starts):
            result = flow[0](config=config, overrides=overrides)
    except Exception as err:
        _run_failed(name, err)
    return {**result, "run_id": report_run or result["run_id"]}


def _flow(name: str, source: str | None, report_run: str | None):
    """The flow function ``fusion run NAME`` calls, with its source or run bound (imports Prefect)."""
    from flows import cluster, drift, infer, ingest, mine, nightly, preprocess, report, train

    if name in ("ingest", "nightly"):
        return partial({"ingest": ingest.ingest_flow, "nightly": nightly.nightly_flow}[name], source=source)
    if name == "report":
        return partial(report.report_flow, run_id=report_run)
    return {"preprocess": preprocess.preprocess_flow, "drift": drift.drift_flow, "train": train.train_flow,
            "infer": infer.infer_flow, "cluster": cluster.cluster_flow, "mine": mine.mine_flow}[name]


def _writable_store(name: str, settings: Settings) -> Store:
    """The store a flow will write to. Refused: a store whose root or catalog cannot be written or reached,
    or that another run is writing to (but for a report of a past run); and a store that does not exist,
    unless the flow ingests."""
    try:
        store = Store.from_settings(settings) if name in ("ingest", "nightly") else Store.open_existing(settings)
        store.check_writable()
        if name != "report":
            store.check_not_busy()
        return store
    except StoreNotFoundError as err:
        fail(str(err), 1)
    except (StoreReadOnlyError, StoreBusyError) as err:
        fail(str(err))
    except OSError as err:  # a new store's root cannot even be created
        fail(f"the store root {settings.store.root} cannot be created: {one_line(err)}")
    except Exception as err:  # e.g. an unreachable catalog database
        _run_failed(name, err)


def _check_inputs(name: str, settings: Settings, store: Store) -> None:
    """Fail when the stage has nothing to work on, naming the stage to run first."""
    try:
        check_inputs(settings, store, name)
    except LookupError as err:
        fail(str(err), 1)
    except Exception as err:  # e.g. an unreachable catalog database
        _run_failed(name, err)


def _run_failed(name: str, err: Exception) -> None:
    """End the command with one line, exit code 1; the run is recorded as failed (store and Prefect)."""
    if state["debug"]:
        traceback.print_exception(err)
    typer.secho(f"{ERROR_PREFIX}run {name} failed: {one_line(err)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _source(source: str) -> str:
    """A URI as given, or an existing local path made absolute; anything else is refused."""
    if uri.is_uri(source):
        return source
    if not Path(source).exists():
        fail(f"source {source!r} does not exist")
    return str(Path(source).resolve())


def _print_run(run_id: str, settings: Settings) -> None:
    catalog = Store.from_settings(settings)
    typer.echo("\n" + describe_run(catalog.get_run(run_id), catalog, compact=True))


def demo(config: Optional[str] = ConfigOpt, store: Optional[str] = StoreOpt,
         sets: list[str] = SetOpt) -> None:
    """Generate the demo image set and run the nightly flow on it.

    Example: fusion demo --store ./store
    """
    from fusion_core.demo_data import generate_demo_images

    setup_logging()
    settings, overrides = settings_for(config, store, sets)
    if settings.train.epochs is None:
        settings, overrides = settings_for(config, store, [*sets, f"train.epochs={settings.demo.epochs}"])
    made = generate_demo_images(settings.demo.source, per_class=settings.demo.per_class, seed=settings.demo.seed)
    typer.echo(f"demo data: {made.images} images ({made.with_missing} with missing pixels, "
               f"{made.corrupt} corrupt files) in {Path(made.root).resolve()}")
    result = _run_flow("nightly", settings.demo.source, settings, config, overrides)
    _print_run(result["run_id"], settings)


def run(flow: str = typer.Argument(..., help=f"one of: {', '.join(FLOWS)}",
                                   autocompletion=lambda incomplete: [f for f in FLOWS if f.startswith(incomplete)]),
        source: Optional[str] = typer.Option(None, "--source", help=SOURCE_HELP + " (ingest, nightly)"),
        report_run: Optional[str] = typer.Option(None, "--run", help="report: the run to report on (default: "
                                                 "latest)", autocompletion=complete_run),
        config: Optional[str] = ConfigOpt, store: Optional[str] = StoreOpt,
        sets: list[str] = SetOpt,
        workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers (train.num_workers)"),
        gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="train and infer on GPUs (train.use_gpu)"),
        ) -> None:
    """Run one flow now, locally or on the Ray cluster at RAY_ADDRESS / ray.address.

    Example: fusion run ingest --source ./photos --store ./store --set preprocess.size=64
    """
    if flow not in FLOWS:
        fail(f"unknown flow {flow!r}; choose one of: {', '.join(FLOWS)}")
    sets = list(sets)
    if workers is not None:
        sets.append(f"train.num_workers={workers}")
    if gpu is not None:
        sets.append(f"train.use_gpu={gpu}")
    settings, overrides = settings_for(config, store, sets)
    setup_logging()
    result = _run_flow(flow, source, settings, config, overrides, report_run)
    _print_run(result["run_id"], settings)


def serve(source: str = typer.Option(..., "--source", help=SOURCE_HELP),
          config: Optional[str] = ConfigOpt, store: Optional[str] = StoreOpt,
          sets: list[str] = SetOpt, cron: str = typer.Option(NIGHTLY_CRON, help="cron schedule (UTC)"),
          port: int = typer.Option(4200, help="port of the local Prefect server started when PREFECT_API_URL is unset")
          ) -> None:
    """Serve the nightly flow on its cron schedule until stopped.

    Scheduling needs a Prefect server: the one at PREFECT_API_URL, or else a local one started here.

    Example: fusion serve --source /data/incoming --store /data/fusion --cron "0 2 * * *"
    """
    setup_logging()
    settings, overrides = settings_for(config, store, sets)
    source = _source(source)
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo(f"starting a local Prefect server on port {port} (set PREFECT_API_URL to use another)")
        try:
            server, os.environ["PREFECT_API_URL"] = start_server(port, settings.orchestration.server_startup_timeout,
                                                                 ui=True)
        except ServerStartError as err:
            fail(f"{err}; is the port in use? Try --port.")
    try:
        from flows.nightly import nightly_flow

        nightly_flow.serve(name="nightly", cron=cron,
                           parameters={"source": source, "config": config,
                                       "overrides": overrides})
    finally:
        if server is not None:
            stop_server(server)


def doctor(config: Optional[str] = ConfigOpt, store: Optional[str] = StoreOpt, sets: list[str] = SetOpt,
           fmt: str = typer.Option("text", "--format", "-f", help="text or json",
                                   autocompletion=complete_from("text", "json"))) -> None:
    """Check what a run needs: Prefect, store, catalog, Ray and its workers.

    Versions are checked too. Exit code 0 when no check failed, 1 otherwise.

    Example: fusion doctor --config cluster --format json | jq '.[] | select(.status == "FAIL")'
    """
    import json

    from prefect.settings import get_current_settings

    from fusion_core.tools.doctor import FAIL, WARN, run_checks, summary

    if fmt not in ("text", "json"):
        fail(f"--format {fmt!r}: choose text or json")
    settings, _ = settings_for(config, store, sets)
    if not state["debug"]:
        logging.getLogger("ray").setLevel(logging.ERROR)  # its start-up lines would interleave with the checks
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


def report(run_id: str = typer.Argument("latest", help="run id or latest", autocompletion=complete_run),
           store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Write a run's HTML report (as `fusion run report --run` does) and print its path.

    Example: xdg-open "$(fusion report latest)"
    """
    settings, overrides = settings_for(config, store, sets)
    setup_logging()
    result = _run_flow("report", None, settings, config, overrides, run_id)
    typer.echo(result["outputs"]["report"])
