"""``fusion find``: what the mine stage found in a run's collection."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import (ConfigOpt, FormatOpt, LimitOpt, RunOpt, SetOpt, StoreOpt, check_format, find_run,
                           open_store)
from flows.cli.query import OutOpt, PathOpt, print_rows, with_paths
from fusion_core.learning.mining import FINDINGS


class Finding(str, Enum):
    """What ``fusion find`` lists, and the ``findings`` rows it reads."""

    duplicates = "duplicates"
    leaks = "leaks"
    label_errors = "label-errors"
    outliers = "outliers"


KIND = {Finding(name): kind for kind, name in FINDINGS.items()}
COLUMNS = {Finding.duplicates: ["duplicate_set", "score", "path", "label", "split", "image"],
           Finding.leaks: ["duplicate_set", "score", "path", "label", "split", "image"],
           Finding.label_errors: ["score", "path", "label", "suggested", "split", "image"],
           Finding.outliers: ["score", "path", "label", "split", "image"]}


def find(what: Finding = typer.Argument(..., help="what to list"), run: str = RunOpt,
         path: Optional[str] = PathOpt, out: Optional[Path] = OutOpt, limit: Optional[int] = LimitOpt,
         store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt,
         fmt: str = FormatOpt) -> None:
    """What the mine stage found, with each image's source path: near-duplicate sets (score: similarity to the
    nearest copy), sets that leak between training and holdout images, likely label errors (score: how doubtful
    the given label is; with the suggested label), outliers (score: uniqueness). Most certain first.

    Example: fusion find label-errors --format csv > to-review.csv
    """
    check_format(fmt)
    catalog = open_store(config, store, sets)
    source_run = catalog.results_run(find_run(catalog, run, "mine")["run_id"], "mine")
    order = ("-score", "image_id")
    if what in (Finding.duplicates, Finding.leaks):
        order = ("duplicate_set", *order)
    rows = catalog.select_results("findings", source_run, equal={"kind": KIND[what]}, path_glob=path,
                                  order_by=order, limit=None if out or fmt == "table" else limit)
    print_rows(with_paths(catalog, rows), fmt, COLUMNS[what], limit, out)
