"""``fusion exclude``, ``relabel``, ``review`` and ``decisions``: people's decisions about images, which the next
training run applies (excluded images leave its training data and holdout; corrected labels replace the
given ones)."""

from __future__ import annotations

import csv
import getpass
from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import (ConfigOpt, FormatOpt, LimitOpt, SetOpt, StoreOpt, check_format, complete_label, fail,
                           image_ids, open_store)
from flows.cli.query import print_rows, with_paths
from fusion_core.store import Store

ReasonOpt = typer.Option(None, "--reason", help="why, recorded with the decision")
REVIEW_ACTIONS = ("exclude", "relabel", "undo")
NEXT = "the next training run applies it (fusion decisions lists what is in force)"


def exclude(images: list[str] = typer.Argument(..., help="image ids, id prefixes (6+ characters) or source paths"),
            reason: Optional[str] = ReasonOpt,
            undo: bool = typer.Option(False, "--undo", help="withdraw the decisions about these images instead"),
            store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Leave images out of training and the holdout from the next training run on.

    Example: fusion find duplicates --format csv | ... ; fusion exclude 3fa4c2b19e07 photos/blurry.jpg
    """
    catalog = open_store(config, store, sets)
    ids = [_image_id(catalog, "fusion exclude", ref) for ref in images]
    if undo:
        typer.echo(f"withdrew {catalog.undecide(ids)} decision(s); {NEXT}")
        return
    count = catalog.decide(({"image_id": i, "action": "exclude", "reason": reason} for i in ids), getpass.getuser())
    typer.echo(f"excluded {count} image(s); {NEXT}")


def relabel(image: str = typer.Argument(..., help="image id, id prefix (6+ characters) or source path"),
            label: str = typer.Argument(..., help="the correct label", autocompletion=complete_label),
            reason: Optional[str] = ReasonOpt,
            store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Correct an image's label from the next training run on.

    Example: fusion find label-errors, then fusion relabel 3fa4c2b19e07 triangle --reason "checked by eye"
    """
    catalog = open_store(config, store, sets)
    image_id = _image_id(catalog, "fusion relabel", image)
    _check_label(catalog, "fusion relabel", label)
    catalog.decide([{"image_id": image_id, "action": "relabel", "label": label, "reason": reason}], getpass.getuser())
    typer.echo(f"relabelled {image_id[:12]} as {label}; {NEXT}")


def review(file: Path = typer.Argument(..., help="a CSV file with columns image, action (exclude, relabel or "
                                                 "undo), label (for relabel) and reason (optional)"),
           store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt) -> None:
    """Record a file of decisions at once; one bad row records none.

    Example: fusion find label-errors --format csv > review.csv, edit it into image,action,label rows, then
    fusion review review.csv
    """
    catalog = open_store(config, store, sets)
    rows = _read_review(catalog, file)
    decided = [r for r in rows if r["action"] != "undo"]
    withdrawn = catalog.undecide(r["image_id"] for r in rows if r["action"] == "undo")
    catalog.decide(decided, getpass.getuser())
    excluded = sum(r["action"] == "exclude" for r in decided)
    typer.echo(f"recorded {excluded} exclusion(s) and {len(decided) - excluded} relabel(s), withdrew {withdrawn} "
               f"decision(s); {NEXT}")


def decisions(limit: Optional[int] = LimitOpt, store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt,
              sets: list[str] = SetOpt, fmt: str = FormatOpt) -> None:
    """List the decisions in force, newest first, with each image's source path.

    Example: fusion decisions --format csv > decisions.csv
    """
    check_format(fmt)
    catalog = open_store(config, store, sets)
    rows = with_paths(catalog, catalog.decision_rows())
    if not rows and fmt == "table":
        typer.echo("no decisions (see fusion exclude, fusion relabel, fusion review)")
        return
    print_rows(rows, fmt, ["action", "label", "path", "actor", "decided_at", "reason", "image"], limit)


def _image_id(catalog: Store, command: str, ref: str, where: str = "") -> str:
    """The one image ``ref`` names; none or several end the command (exit 1)."""
    ids = image_ids(catalog, ref)
    if not ids:
        fail(f"{command}: {where}no image {ref!r} in the store (give an image id, a prefix of 6+ characters "
             "or a source path)", 1)
    if len(ids) > 1:
        fail(f"{command}: {where}{ref!r} names {len(ids)} images; give more of the id", 1)
    return ids[0]


def _check_label(catalog: Store, command: str, label: str, where: str = "") -> None:
    """A label the champion does not know ends the command with the labels it knows (exit 2); any label
    goes while there is no champion."""
    from fusion_core.learning.registry import read_classes

    champion = catalog.champion()
    known = read_classes(champion["path"]) if champion else None
    if known and label not in known:
        fail(f"{command}: {where}unknown label {label!r}; the champion knows {', '.join(known)}")


def _read_review(catalog: Store, file: Path) -> list[dict]:
    """The decisions of a review file, each checked (image, action, label); the first bad row ends the command."""
    try:
        with open(file, newline="") as fh:
            lines = list(csv.DictReader(fh))
    except OSError as err:
        fail(f"cannot read {file}: {err.strerror}", 1)
    if lines and not {"image", "action"} <= set(lines[0]):
        fail(f"{file} needs the columns image and action (and label for relabel); it has "
             f"{', '.join(lines[0])}")
    rows = []
    for number, line in enumerate(lines, start=2):
        where = f"{file.name} line {number}: "
        action, label = (line.get("action") or "").strip(), (line.get("label") or "").strip() or None
        if action not in REVIEW_ACTIONS:
            fail(f"{where}action {action!r}; choose {', '.join(REVIEW_ACTIONS)}")
        if action == "relabel":
            if not label:
                fail(f"{where}relabel needs a label")
            _check_label(catalog, "fusion review", label, where)
        rows.append({"image_id": _image_id(catalog, "fusion review", (line["image"] or "").strip(), where),
                     "action": action, "label": label if action == "relabel" else None,
                     "reason": (line.get("reason") or "").strip() or None})
    return rows
