"""Folder sources: the files of a folder tree, labelled by their first-level subfolder."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator

from fusion_core import uri
from fusion_core.data.sources.common import Item, quarantine_row, shown, split_name

MASK_SUFFIX = ".mask"  # sibling mask of a.png: a.mask.png (any image format)


def folder_items(root: str, problems: list[dict]) -> Iterator[Item]:
    """Files under a folder, recursively, in sorted path order; labels from the first-level subfolder.

    When every first-level entry is a split folder (``train/cat/1.jpg``, ``test/cat/9.jpg``),
    the split comes from it and the label from the level below. Hidden entries are
    skipped; ``x.mask.png`` is the mask of its sibling ``x.*``. A local folder is listed one
    directory at a time, never whole.
    """
    if uri.is_uri(root):
        files = uri.walk_files(root)
        pairs: Iterable[tuple[str, str | None]] = _paired(files)
        split_dirs = bool(files) and all("/" in rel and split_name(rel.partition("/")[0]) for rel in files)
    else:
        pairs, split_dirs = _walk_local(root, problems), _split_dirs_local(root)
    prefix = root.rstrip("/") + "/"  # URIs and local paths both join with "/" here (no Windows paths)
    for rel, mask in pairs:
        top, _, below = rel.partition("/")
        split = split_name(top) if split_dirs else None
        label, sep, _ = (below if split else rel).partition("/")
        path = prefix + rel
        yield shown(path), shown(label) if sep else None, path, None if mask is None else prefix + mask, split


def _paired(files: list[str]) -> list[tuple[str, str | None]]:
    """Each file that is not a mask, with the path of its mask (``x.mask.*`` beside ``x.*``) or None."""
    by_stem = {}
    for rel in files:
        stem, _ = posixpath.splitext(rel)
        if stem.endswith(MASK_SUFFIX):
            by_stem[stem[:-len(MASK_SUFFIX)]] = rel
    masked = set(by_stem.values())
    return [(rel, by_stem.get(posixpath.splitext(rel)[0])) for rel in files if rel not in masked]


def _split_dirs_local(root: str) -> bool:
    """Whether every file under ``root`` lies in a split-named first-level folder (and there is one)."""
    try:
        tops = [e for e in os.scandir(root) if not e.name.startswith(".")]
    except OSError:
        return False
    real_root, found = os.path.realpath(root), False
    for top in tops:
        kind = _kind(top)
        if kind == "dir" and os.path.realpath(top.path) == real_root:
            continue  # a link back to the root: a loop the walk skips
        has_file = kind == "file" or (kind == "dir" and next(_walk_local(root, [], top.name), None) is not None)
        if has_file and not (kind == "dir" and split_name(top.name)):
            return False
        found = found or has_file
    return found


def _kind(entry: os.DirEntry) -> str | None:
    """``dir`` or ``file`` (symlinks followed), or None for anything else or what cannot be read."""
    try:
        return "dir" if entry.is_dir() else "file" if entry.is_file() else None
    except OSError:
        return None


def _walk_local(root: str, problems: list[dict], rel_dir: str = "",
                ancestors: tuple[str, ...] | None = None) -> Iterator[tuple[str, str | None]]:
    """``(relative posix path, its mask's or None)`` of the regular files below ``rel_dir``, in sorted path
    order, one directory listed at a time; symlinked folders are followed but never into a loop."""
    ancestors = ancestors or (os.path.realpath(root),)
    here = os.path.join(root, rel_dir)
    try:
        entries = list(os.scandir(here))
    except OSError as err:
        problems.append(quarantine_row(here, "unreadable", f"{type(err).__name__}: {err}"))
        return
    listed = []  # (sort key, relative path, the ancestors of a folder or None for a file)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        try:
            if entry.is_file(follow_symlinks=False):  # the common case, from the directory listing alone
                listed.append((entry.name, rel, None))
                continue
            st = os.stat(entry.path)
        except OSError as err:
            reason = "symlink_loop" if err.errno == errno.ELOOP else "unreadable"
            problems.append(quarantine_row(entry.path, reason, f"{type(err).__name__}: {err}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            real = os.path.realpath(entry.path)
            if real in ancestors:
                problems.append(quarantine_row(entry.path, "symlink_loop", f"links back to {real}, which contains it"))
            else:
                listed.append((entry.name + "/", rel, ancestors + (real,)))  # "/" keeps whole paths in sorted order
        elif stat.S_ISREG(st.st_mode):
            listed.append((entry.name, rel, None))
        else:
            problems.append(quarantine_row(entry.path, "unreadable", "not a regular file"))
    listed.sort(key=lambda e: e[0])
    masks = dict(_paired([rel for _, rel, below in listed if below is None]))
    for _, rel, below in listed:
        if below is not None:
            yield from _walk_local(root, problems, rel, below)
        elif rel in masks:
            yield rel, masks[rel]
