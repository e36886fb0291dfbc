"""Manifest sources: the rows of a CSV or Parquet file listing image paths, labels, masks and splits."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

from fusion_core import uri
from fusion_core.sources.common import Item, quarantine_row, split_name

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


def manifest_items(path: str, problems: list[dict]) -> Iterator[Item]:
    """Rows of a CSV or Parquet manifest: ``path`` (relative to the manifest), optional ``label``, ``mask``, ``split``.

    A row whose ``split`` is not a split name (train, val, test; valid, validation) is quarantined.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with uri.open_input(path) as fh:
        if path.lower().endswith(".csv"):
            table = pacsv.read_csv(fh, convert_options=pacsv.ConvertOptions(
                column_types={"path": "string", "label": "string", "mask": "string", "split": "string"},
                strings_can_be_null=True))
        else:
            table = pq.read_table(fh)
    if "path" not in table.column_names:
        raise ValueError(f"manifest {path!r} has no 'path' column (columns: {', '.join(table.column_names)})")
    base = posixpath.dirname(path) if uri.is_uri(path) else os.path.dirname(os.path.abspath(path))
    cols = table.to_pydict()
    labels = cols.get("label") or [None] * table.num_rows
    masks = cols.get("mask") or [None] * table.num_rows
    splits = cols.get("split") or [None] * table.num_rows
    for i, (rel, label, mask, given) in enumerate(zip(cols["path"], labels, masks, splits)):
        if not rel:
            problems.append(quarantine_row(f"{path}#{i}", "unreadable", "manifest row has no path"))
            continue
        split = split_name(given) if given else None
        if given and split is None:
            problems.append(quarantine_row(f"{path}#{i}", "bad_split",
                                           f"split {given!r} of {rel} is not train, val (valid, validation) or test"))
            continue
        full = _resolve(base, rel)
        yield full, None if label is None else str(label), full, _resolve(base, mask) if mask else None, split


def _resolve(base: str, rel: str) -> str:
    if uri.is_uri(rel) or os.path.isabs(rel):
        return rel
    return posixpath.join(base, rel) if uri.is_uri(base) else os.path.normpath(os.path.join(base, rel))
