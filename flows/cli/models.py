"""``fusion models``: list, promote, roll back and compare model versions."""

from __future__ import annotations

from typing import Optional

import typer

from flows.cli.app import (ConfigOpt, FormatOpt, SetOpt, StoreOpt, check_format, complete_version, fail, open_store,
                           settings_for)
from flows.terminal import render, table_lines
from fusion_core.store import Store


app = typer.Typer(name="models", context_settings={"help_option_names": ["-h", "--help"]})
VersionArg = typer.Argument(..., help="a model version (see fusion models)", autocompletion=complete_version)


@app.callback(invoke_without_command=True)
def models(ctx: typer.Context, store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
           sets: list[str] = SetOpt, fmt: str = FormatOpt) -> None:
    """List, promote, roll back or compare model versions; alone, list them.

    Example: fusion models compare 3 4, or fusion models --format csv > models.csv
    """
    if ctx.invoked_subcommand is None:
        list_models(store, config, sets, fmt)


@app.command("list")
def list_models(store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt,
                fmt: str = FormatOpt) -> None:
    """Model versions with their stage (champion, challenger, archived) and holdout metrics.

    Example: fusion models list --format json | jq '.[] | select(.stage == "champion")'
    """
    check_format(fmt)
    rows = [{"version": m["version"], "stage": m["stage"], "name": m["name"],
             "accuracy": m["metrics"]["accuracy"], "macro_f1": m["metrics"]["macro_f1"],
             "ece": m["metrics"].get("ece"), "data": m["dataset_version"],
             "code": m["config"].get("code_version"), "run_id": m["run_id"], "created_at": m["created_at"],
             "path": m["path"]} for m in open_store(config, store, sets).list_models()]
    typer.echo(render(rows, fmt, ["version", "stage", "name", "accuracy", "macro_f1", "ece", "data", "code",
                                  "run_id"], len(rows) or None))


@app.command()
def history(store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt,
            fmt: str = FormatOpt) -> None:
    """Every change of champion, oldest first, with who made it and why.

    Example: fusion models history --format csv > promotions.csv
    """
    check_format(fmt)
    rows = [{**p, "was": f"v{p['previous']}" if p["previous"] else "-"}
            for p in open_store(config, store, sets).promotion_history()]
    typer.echo(render(rows, fmt, ["at", "version", "was", "forced", "actor", "reason"], len(rows) or None))


@app.command()
def promote(version: int = VersionArg,
            force: bool = typer.Option(False, "--force", help="promote even if the gate says no (needs --reason)"),
            reason: Optional[str] = typer.Option(None, "--reason", help="why, recorded with the promotion"),
            store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Make a version champion through the promotion gate, or past it with --force and a --reason.

    Example: fusion models promote 4, or fusion models promote 4 --force --reason "hotfix for class x"
    """
    catalog = open_store(config, store, sets)
    _require_versions(catalog, "promote", [version])
    _change_champion(catalog, "promote", version, force, reason, config, store, sets)


@app.command()
def rollback(version: Optional[int] = typer.Argument(None, help="the version to go back to (default: the "
                                                                "previous champion)", autocompletion=complete_version),
             store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Go back to the previous champion, or to a named version.

    Example: fusion models rollback
    """
    catalog = open_store(config, store, sets)
    _require_versions(catalog, "rollback", [version] if version is not None else [])
    _change_champion(catalog, "rollback", version, False, None, config, store, sets)


@app.command()
def compare(a: int = VersionArg, b: int = VersionArg,
            pixels: Optional[int] = typer.Option(None, "--pixels", help="the pixels version whose holdout scores "
                                                                        "both (default: B's training data)"),
            store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Score two versions on the same holdout, overall and per class, with McNemar's test.

    Example: fusion models compare 3 4 --pixels 2
    """
    catalog = open_store(config, store, sets)
    _require_versions(catalog, "compare", [a, b])
    _compare_models(catalog, a, b, pixels)


def _require_versions(catalog: Store, action: str, versions: list[int]) -> None:
    """End the command (exit code 1) when a version does not exist."""
    known = [m["version"] for m in catalog.list_models()]
    for version in versions:
        if version not in known:
            fail(f"models {action}: no model version {version}; "
                 + (f"versions are {known[0]}-{known[-1]}" if known else "no models yet (run train)"), 1)


def _change_champion(catalog: Store, action: str, version: int | None, force: bool, reason: str | None,
                     config: str | None, store: str | None, sets: list[str]) -> None:
    """``promote V`` or ``rollback [V]``, by the registry's policy; a refusal ends the command."""
    import getpass

    from fusion_core.learning.registry import PromotionRefused, change_champion

    train = settings_for(config, store, sets)[0].train
    try:
        version, was = change_champion(catalog, action, version, margin=train.promote_margin,
                                       alpha=train.promote_alpha, force=force, reason=reason, actor=getpass.getuser())
    except LookupError as err:
        fail(f"models {action}: {err}", 1)
    except PromotionRefused as err:
        fail(str(err) if action == "promote" and not force else f"fusion models {action}: {err}")
    typer.echo(f"model v{version} is now champion"
               + (f" (was v{was['version']})" if was and was["version"] != version else ""))


def _compare_models(catalog: Store, a: int, b: int, pixels_version: int | None) -> None:
    """Both models scored on the same holdout, overall and per class, with McNemar's test."""
    from fusion_core.learning.scoring import compare_models

    model_a, model_b = catalog.get_model(a), catalog.get_model(b)
    try:
        pixels = catalog.require_version("pixels", pixels_version or model_b["dataset_version"])
    except LookupError as err:
        fail(f"models compare: {err}; name one with --pixels", 1)
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
