"""``fusion find``: what the mine stage found in a run's collection; ``fusion similar``: the images most like one."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import (ConfigOpt, FormatOpt, LimitOpt, RunOpt, SetOpt, StoreOpt, check_format, fail, find_run,
                           image_ids, open_store, settings_for)
from flows.cli.query import OutOpt, PathOpt, print_rows, with_paths
from fusion_core.learning.mining import FINDINGS


class Finding(str, Enum):
    """What ``fusion find`` lists, and the ``findings`` rows it reads."""

    duplicates = "duplicates"
    leaks = "leaks"
    label_errors = "label-errors"
    outliers = "outliers"
    quality = "quality"


KIND = {Finding(name): kind for kind, name in FINDINGS.items()}
COLUMNS = {Finding.duplicates: ["duplicate_set", "score", "path", "label", "split", "image"],
           Finding.leaks: ["duplicate_set", "score", "path", "label", "split", "image"],
           Finding.label_errors: ["score", "path", "label", "suggested", "split", "image"],
           Finding.outliers: ["score", "path", "label", "split", "image"],
           Finding.quality: ["flags", "path", "label", "split", "image"]}


def find(what: Finding = typer.Argument(..., help="what to list"), run: str = RunOpt,
         path: Optional[str] = PathOpt, out: Optional[Path] = OutOpt, limit: Optional[int] = LimitOpt,
         store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt,
         fmt: str = FormatOpt) -> None:
    """What the mine stage found, most certain first, with each image's source path.

    Near-duplicate sets (score: similarity to the nearest copy), sets that leak between training and holdout
    images, likely label errors (score: how doubtful the given label is; with the suggested label), outliers
    (score: uniqueness), poor images (flags: dark, light, near_constant, low_information, blurry, grey,
    odd_size; score: how many).

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


def similar(image: str = typer.Argument(..., help="a stored image (id, id prefix of 6+ characters, source path) or "
                                                  "any image file"),
            k: int = typer.Option(10, "-k", min=1, help="how many"), run: str = RunOpt,
            store: Optional[str] = StoreOpt, config: Optional[str] = ConfigOpt, sets: list[str] = SetOpt,
            fmt: str = FormatOpt) -> None:
    """The stored images most like an image, with their source paths.

    By cosine similarity of their embeddings in a run's predictions. A file not in the store is embedded by the
    model that made those predictions (prepared with the preprocess settings of -c and --set).

    Example: fusion similar photos/cat.jpg -k 5 --format json | jq -r '.[].path'
    """
    from fusion_core.tools.similar import file_embedding, nearest, stored_embedding

    check_format(fmt)
    catalog = open_store(config, store, sets)
    infer = next(s for s in find_run(catalog, run, "infer")["stages"] if s["stage"] == "infer")
    predictions = catalog.get_version("predictions", infer["outputs"]["version"])
    ids = image_ids(catalog, image)
    query = stored_embedding(catalog, predictions, ids[0]) if len(ids) == 1 else None
    if query is None:
        if not os.path.isfile(image):
            fail(f"no image {image!r} in run {run}'s predictions, and no such file", 1)
        try:
            query = file_embedding(settings_for(config, store, sets)[0], catalog, predictions,
                                   Path(image).read_bytes())
        except ValueError as err:
            fail(f"{image}: {err}")
    rows = nearest(catalog, predictions, query, k, skip=ids[0] if len(ids) == 1 else None)
    print_rows(with_paths(catalog, rows), fmt, ["similarity", "path", "label", "predicted", "split", "image"], k)
