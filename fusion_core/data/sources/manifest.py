"""Manifest sources: the rows of a CSV or Parquet file listing image paths, labels, masks and splits."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

from fusion_core import uri
from fusion_core.data.sources.common import Item, quarantine_row, split_name

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


def manifest_items(path: str, problems: list[dict], paths_anywhere: bool = False) -> Iterator[Item]:
    """Rows of a CSV or Parquet manifest: ``path`` (relative to the manifest), optional ``label``, ``mask``, ``split``.

    A manifest that cannot be read, a row whose ``split`` is not a split name (train, val, test; valid,
    validation), and, unless ``paths_anywhere``, a row naming a file outside the manifest's folder are
    quarantined.
    """
    base = posixpath.dirname(path) if uri.is_uri(path) else os.path.dirname(os.path.abspath(path))
    try:
        cols = _read_manifest(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid and UnicodeDecodeError are ValueErrors
        problems.append(quarantine_row(path, "bad_manifest", f"not a readable manifest: {type(err).__name__}: {err}"))
        return
    rows = len(cols["path"])
    labels = cols.get("label") or [None] * rows
    masks = cols.get("mask") or [None] * rows
    splits = cols.get("split") or [None] * rows
    for i, (rel, label, mask, given) in enumerate(zip(cols["path"], labels, masks, splits)):
        if not rel:
            problems.append(quarantine_row(f"{path}#{i}", "unreadable", "manifest row has no path"))
            continue
        if "\x00" in rel or (mask and "\x00" in mask):
            problems.append(quarantine_row(f"{path}#{i}", "unreadable", f"path {rel!r} holds a NUL byte"))
            continue
        split = split_name(given) if given else None
        if given and split is None:
            problems.append(quarantine_row(f"{path}#{i}", "bad_split",
                                           f"split {given!r} of {rel} is not train, val (valid, validation) or test"))
            continue
        full, mask_path = _resolve(base, rel), _resolve(base, mask) if mask else None
        outside = [p for p in (full, mask_path) if p is not None and not _inside(base, p)]
        if outside and not paths_anywhere:
            problems.append(quarantine_row(f"{path}#{i}", "outside_manifest",
                                           f"{outside[0]!r} is outside the manifest's folder {base!r}; set "
                                           f"ingest.manifest_paths_anywhere=true to allow it"))
            continue
        yield full, None if label is None else str(label), full, mask_path, split


def _read_manifest(path: str) -> dict[str, list]:
    """The manifest's columns, with a ``path`` column of strings.

    Raises:
        ValueError: not a CSV or Parquet table with a text ``path`` column in UTF-8.
    """
    import pyarrow as pa
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
        raise ValueError(f"no 'path' column (columns: {', '.join(table.column_names)})")
    for name in ("path", "mask", "split"):
        if name in table.column_names and not pa.types.is_string(table.schema.field(name).type):
            raise ValueError(f"column {name!r} is {table.schema.field(name).type}, not text")
    return table.to_pydict()


def _resolve(base: str, rel: str) -> str:
    if uri.is_uri(rel) or os.path.isabs(rel):
        return rel
    return posixpath.join(base, rel) if uri.is_uri(base) else os.path.normpath(os.path.join(base, rel))


def _inside(base: str, path: str) -> bool:
    """Whether ``path`` lies below the folder ``base`` (both local, or both URIs of one bucket)."""
    if uri.is_uri(base) or uri.is_uri(path):
        return path.startswith(base.rstrip("/") + "/") and ".." not in path.split("/")
    return os.path.commonpath([os.path.realpath(base), os.path.realpath(path)]) == os.path.realpath(base)
