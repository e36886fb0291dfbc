"""The ``fusion`` command's frame: the Typer app, its global options, shared options, and how commands end.

Exit codes: 0 done; 1 a failed run, an inconsistent store, or something named that does not exist (store,
run, model, version); 2 a command used wrongly (an unknown option, flow or setting, a bad value).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import typer
from typer.core import TyperGroup

from flows.terminal import FORMATS
from fusion_core.config import ConfigError, Settings, load_settings, parse_overrides, profile_names
from fusion_core.errors import one_line
from fusion_core.store import Store, StoreNotFoundError

ERROR_PREFIX = "fusion: "  # every error line starts with it: usage errors, failed runs, names that do not exist


class InOrder(TyperGroup):
    """Lists the commands in ``order`` (flows.cli sets it), command groups such as ``models`` among them; a
    command used wrongly ends with one line, as every other error does."""

    order: list[str] = []

    def list_commands(self, ctx) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda n: self.order.index(n) if n in self.order else 99)

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as err:  # Typer's own Click's errors: usage, a bad value, help for no arguments
            if type(err).__name__ == "NoArgsIsHelpError":  # the help is printed as the message is formatted
                err.format_message()
                sys.exit(err.exit_code)
            command = getattr(getattr(err, "ctx", None), "command_path", None)
            hint = f" (see {command} -h)" if command else ""
            typer.secho(f"{ERROR_PREFIX}{err.format_message()}{hint}", fg=typer.colors.RED, err=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.secho(f"{ERROR_PREFIX}aborted", fg=typer.colors.RED, err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=InOrder, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fusion: mine image collections - ingest, impute, train, infer, cluster. "
                       "Example: fusion demo, then fusion runs and fusion show latest")

FLOWS = ("ingest", "preprocess", "drift", "train", "infer", "cluster", "mine", "report", "nightly")
FORMAT_HELP = "table, json, csv or ids (one id per line); all but table print every row unless --limit"
state = {"debug": False, "quiet": False}  # set by the --debug and --quiet options


def _completed_store(ctx: typer.Context) -> Store:
    return Store.open_existing(load_settings(ctx.params.get("config"), _overrides(ctx.params.get("store"))))


def complete_run(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of run ids: ``latest`` and the newest runs of the store named so far."""
    try:
        ids = ["latest"] + [r["run_id"] for r in _completed_store(ctx).list_runs(50)]
    except Exception:  # completion must never fail loudly
        ids = ["latest"]
    return [i for i in ids if i.startswith(incomplete)]


def complete_label(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of labels: those given or predicted in the newest predictions of the store named so far."""
    try:
        store = _completed_store(ctx)
        run = store.results_run(store.find_run("latest", "infer")["run_id"], "infer")
        labels = {v for column in ("label", "predicted") for v in store.distinct_results("predictions", run, column)}
    except Exception:  # completion must never fail loudly
        labels = set()
    return sorted(v for v in labels if v.startswith(incomplete))


def complete_version(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of model versions: those of the store named so far, newest first."""
    try:
        versions = [str(m["version"]) for m in sorted(_completed_store(ctx).list_models(), key=lambda m: -m["version"])]
    except Exception:  # completion must never fail loudly
        versions = []
    return [v for v in versions if v.startswith(incomplete)]


def complete_from(*values: str):
    """Shell completion of an option whose values are a closed set."""
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]
    return complete


ConfigOpt = typer.Option(None, "--config", "-c", help="profile name (smoke, local, cluster) or YAML file",
                         autocompletion=complete_from(*profile_names()))
StoreOpt = typer.Option(None, "--store", help="store root (folder or object-store URI)")
SetOpt = typer.Option([], "--set", help="override a setting: SECTION.KEY=VALUE (repeatable)")
FormatOpt = typer.Option("table", "--format", "-f", help=FORMAT_HELP, autocompletion=complete_from(*FORMATS))
LimitOpt = typer.Option(None, "--limit", min=1, help="rows to print (table default: 20)")
RunOpt = typer.Option("latest", "--run", help="run id, or latest: the newest with this stage (see fusion runs)",
                      autocompletion=complete_run)


def _print_version(value: bool) -> None:
    if value:
        from fusion_core.data.runs import code_version

        typer.echo(f"fusion {code_version()}")
        raise typer.Exit()


@app.callback()
def _environment(debug: bool = typer.Option(False, "--debug", "-v", "--verbose",
                                            help="show all log lines, Ray workers' output and tracebacks"),
                 quiet: bool = typer.Option(False, "--quiet", "-q", help="show only the run's summary and errors"),
                 _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                               help="print Fusion's version and exit")) -> None:
    """Quiet defaults for local runs; any value already set in the environment wins."""
    state["debug"], state["quiet"] = debug, quiet and not debug
    if debug:
        os.environ["FUSION_RAY__LOG_TO_DRIVER"] = os.environ["FUSION_VERBOSE"] = "true"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client telemetry, and its three-line notice
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    """The ``fusion`` command: an unexpected error ends it with one line and exit code 1 (the traceback with
    ``--debug``)."""
    try:
        app()
    except Exception as err:
        if state["debug"]:
            traceback.print_exception(err)
        typer.secho(f"{ERROR_PREFIX}{one_line(err)}", fg=typer.colors.RED, err=True)
        sys.exit(1)


def fail(message: str, code: int = 2) -> None:
    """End the command with one red line on stderr: exit code 2 for a command used wrongly, 1 for a name
    that does not exist."""
    typer.secho(f"{ERROR_PREFIX}{message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: choose {', '.join(FORMATS)}")
    return fmt


def _overrides(store: str | None, sets: list[str] = ()) -> dict:
    overrides = parse_overrides(list(sets))
    if store:
        overrides["store.root"] = store
    return overrides


def settings_for(config: str | None, store: str | None, sets: list[str] = ()) -> tuple[Settings, dict]:
    """Settings and the overrides they came from; a bad config ends the command (exit code 2)."""
    try:
        overrides = _overrides(store, sets)
        return load_settings(config, overrides), overrides
    except ConfigError as err:
        fail(str(err))


def open_store(config: str | None, store: str | None, sets: list[str] = ()) -> Store:
    """The existing store named by ``--store`` (or the config's ``store.root``); none there ends the command
    with exit code 1. Nothing is created."""
    settings, _ = settings_for(config, store, sets)
    try:
        return Store.open_existing(settings)
    except StoreNotFoundError as err:
        fail(str(err), 1)


def find_run(catalog: Store, ref: str, stage: str | None = None) -> dict:
    """The run ``ref`` names (an id or ``latest``); none ends the command with the closest match (exit 1)."""
    try:
        return catalog.find_run(ref, stage)
    except LookupError as err:
        fail(str(err), 1)


def require_known(option: str, value, known: list, where: str) -> None:
    """End the command (exit 1) when ``value`` is not one of ``known``, naming the closest and the choices."""
    if value is None or value in known:
        return
    import difflib

    near = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    shown = ", ".join(str(k) for k in known[:12]) + (", ..." if len(known) > 12 else "")
    fail(f"{option} {value!r}: not in {where}" + (f"; did you mean {near[0]}?" if near else "")
         + (f" (known: {shown})" if known else " (it has none)"), 1)


def image_ids(catalog: Store, ref: str) -> list[str]:
    """The stored images a command-line reference names: an image id, a prefix of one (6+ characters), or a
    source path (a local one as given or made absolute)."""
    local = os.path.abspath(ref) if os.path.exists(ref) else ref
    return catalog.resolve_images([local])[local]


# Fusion's INFO lines the run's summary repeats: in the Prefect UI, not on the terminal (unless --debug).
REPEATED_BY_THE_SUMMARY = ("fusion_core.data.runs", "fusion_core.data.publish")


def setup_logging() -> None:
    """On stderr: warnings and errors, Fusion's INFO lines (not those the summary repeats) and the Prefect
    flow run's link; everything with --debug (tracebacks too), only warnings and errors with --quiet. Prefect's
    API gets Fusion's INFO lines and tracebacks whatever the terminal shows."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    if not state["debug"]:
        handler.addFilter(_without_traceback)
        handler.addFilter(_TerminalLines())
    logging.basicConfig(level=logging.INFO if state["debug"] else logging.WARNING, handlers=[handler])
    logging.getLogger("fusion_core").setLevel(logging.WARNING if state["quiet"] else logging.INFO)
    if not state["debug"]:
        logging.getLogger("ray").setLevel(logging.WARNING)  # kept by ensure_ray; Fusion says where the dashboard is


def _without_traceback(record: logging.LogRecord) -> bool:
    """Keep the line, drop its traceback (this handler comes after Prefect's API handler)."""
    record.exc_info = record.exc_text = None
    return True


class _TerminalLines(logging.Filter):
    """Warnings and errors; Fusion's INFO lines but those the summary repeats; the first Prefect flow run link."""

    def __init__(self):
        super().__init__()
        self.linked = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.name.startswith("prefect"):
            first_link = not self.linked and record.getMessage().startswith("View at")
            self.linked = self.linked or first_link
            return first_link and not state["quiet"]
        return record.name.startswith(("fusion_core", "flows", "tasks")) and not record.name.startswith(
            REPEATED_BY_THE_SUMMARY)
