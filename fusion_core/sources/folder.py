"""Folder sources: the files of a folder tree, labelled by their first-level subfolder."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator

from fusion_core import uri
from fusion_core.sources.common import Item, quarantine_row, shown, split_name

MASK_SUFFIX = ".mask"  # sibling mask of a.png: a.mask.png (any image format)


def folder_items(root: str, problems: list[dict]) -> Iterator[Item]:
    """Files under a folder, recursively; labels from the first-level subfolder.

    When every first-level entry is a split folder (``train/cat/1.jpg``, ``test/cat/9.jpg``),
    the split comes from it and the label from the level below. Hidden entries are
    skipped; ``x.mask.png`` is the mask of its sibling ``x.*``.
    """
    files = uri.walk_files(root) if uri.is_uri(root) else _walk_local(root, problems)
    by_stem = {}
    for rel in files:
        stem, _ = posixpath.splitext(rel)
        if stem.endswith(MASK_SUFFIX):
            by_stem[stem[:-len(MASK_SUFFIX)]] = rel
    masked = set(by_stem.values())
    split_dirs = files and all("/" in rel and split_name(rel.partition("/")[0]) for rel in files)
    prefix = root.rstrip("/") + "/"  # URIs and local paths both join with "/" here (no Windows paths)
    for rel in files:
        if rel in masked:
            continue
        top, _, below = rel.partition("/")
        split = split_name(top) if split_dirs else None
        label, sep, _ = (below if split else rel).partition("/")
        path = prefix + rel
        mask = by_stem.get(posixpath.splitext(rel)[0]) if by_stem else None
        yield shown(path), shown(label) if sep else None, path, None if mask is None else prefix + mask, split


def _walk_local(root: str, problems: list[dict]) -> list[str]:
    """Relative posix paths of regular files, following symlinked folders but never into a loop."""
    found = []
    stack = [("", (os.path.realpath(root),))]
    while stack:
        rel_dir, ancestors = stack.pop()
        here = os.path.join(root, rel_dir)
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as err:
            problems.append(quarantine_row(here, "unreadable", f"{type(err).__name__}: {err}"))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_file(follow_symlinks=False):  # the common case, from the directory listing alone
                    found.append(rel)
                    continue
                st = os.stat(entry.path)
            except OSError as err:
                reason = "symlink_loop" if err.errno == errno.ELOOP else "unreadable"
                problems.append(quarantine_row(entry.path, reason, f"{type(err).__name__}: {err}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(entry.path)
                if real in ancestors:
                    problems.append(quarantine_row(entry.path, "symlink_loop",
                                                   f"links back to {real}, which contains it"))
                else:
                    subdirs.append((rel, ancestors + (real,)))
            elif stat.S_ISREG(st.st_mode):
                found.append(rel)
            else:
                problems.append(quarantine_row(entry.path, "unreadable", "not a regular file"))
        stack.extend(reversed(subdirs))
    return sorted(found)
