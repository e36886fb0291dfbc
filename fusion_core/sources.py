"""Source kinds: what ingest reads, as a stream of items.

A source is a folder tree, a tar / tar.gz / zip archive, a CIFAR-10 or
CIFAR-100 batch directory (python-pickle or binary format), or a CSV / Parquet
manifest, given as a local path or a URI that ``pyarrow.fs`` or ``fsspec``
understands (``file://``, ``s3://``, ``gs://``, ...).

An item is ``(source, label, payload, mask, split)``: ``payload`` is a path or
URI to read, the encoded bytes of an archive member, or the uint8 (H, W, C)
pixels of a CIFAR record; ``mask`` is None or the path, URI or bytes of a mask
image; ``split`` is the ``train`` / ``val`` / ``test`` split the source gives
(split folders, CIFAR batch names, a manifest ``split`` column), else None.
Problems found while listing (symlink loops, unsafe archive members, unsafe
pickles, unreadable folders) are appended to a list as quarantine rows.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import logging
import os
import pickle
import posixpath
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np

from fusion_core.decode import QuarantineError

log = logging.getLogger(__name__)

Item = tuple  # (source: str, label: str | None, payload: str | bytes | np.ndarray, mask: str | bytes | None,
              #  split: str | None)

MASK_SUFFIX = ".mask"  # sibling mask of a.png: a.mask.png (any image format)
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
_CIFAR_PY = {"batches.meta": ("label_names", "labels"), "meta": ("fine_label_names", "fine_labels")}
_CIFAR_BIN = {"batches.meta.txt": 1, "fine_label_names.txt": 2}  # label bytes per record
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def quarantine_row(source: str, reason: str, message: str, content_hash: str = "") -> dict:
    """A quarantine row of the ingest stage (the run id is added when stored)."""
    return {"source": source, "content_hash": content_hash, "stage": "ingest",
            "error_class": reason, "message": message[:2000]}


def _split_name(name) -> str | None:
    """``train``, ``val`` or ``test`` for a split name in any case (``valid``, ``validation``: val), else None."""
    return _SPLITS.get(str(name).lower())


def is_uri(source: str) -> bool:
    return "://" in source


@functools.lru_cache(maxsize=16)
def _filesystem(uri: str):
    """``(pyarrow filesystem, path)`` for a URI; fsspec-only protocols are wrapped for pyarrow."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError):  # a scheme pyarrow does not know: ask fsspec
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a local file or of a URI.

    Raises:
        QuarantineError: ``too_large`` when the file holds more than ``max_bytes``.
        OSError: the file cannot be read.
    """
    if not is_uri(path):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = os.read(fd, 1 << 16)  # most images: one read, no stat
            if len(data) < 1 << 16:
                return data
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
            _check_size(st.st_size, max_bytes)
            with open(fd, "rb", closefd=False) as fh:
                return data + fh.read()
        finally:
            os.close(fd)
    fs, path_in_fs = _filesystem(path)
    if max_bytes is not None:
        _check_size(fs.get_file_info(path_in_fs).size or 0, max_bytes)
    with fs.open_input_stream(path_in_fs) as fh:
        return fh.readall()


def _check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise QuarantineError("too_large", f"{size} bytes exceeds ingest.max_file_mb ({max_bytes} bytes)")


def _open_input(path: str):
    """A binary file object (seekable where the filesystem allows) for a local path or URI."""
    if not is_uri(path):
        return open(path, "rb")
    fs, path_in_fs = _filesystem(path)
    return fs.open_input_file(path_in_fs)


def _info(path: str) -> str:
    """``dir``, ``file`` or ``missing``."""
    if not is_uri(path):
        return "dir" if os.path.isdir(path) else "file" if os.path.isfile(path) else "missing"
    import pyarrow.fs as pafs

    fs, path_in_fs = _filesystem(path)
    kind = fs.get_file_info(path_in_fs).type
    return {pafs.FileType.Directory: "dir", pafs.FileType.File: "file"}.get(kind, "missing")


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def _list_dir(path: str) -> list[str]:
    if not is_uri(path):
        return os.listdir(path)
    import pyarrow.fs as pafs

    fs, path_in_fs = _filesystem(path)
    return [posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path_in_fs))]


def source_kind(source: str) -> str:
    """``folder``, ``cifar``, ``archive`` or ``manifest``.

    Raises:
        FileNotFoundError: the source does not exist.
    """
    kind = _info(source)
    if kind == "missing":
        raise FileNotFoundError(f"source {source!r} does not exist")
    if kind == "dir":
        names = set(_list_dir(source))
        return "cifar" if names & (set(_CIFAR_PY) | set(_CIFAR_BIN)) else "folder"
    if source.lower().endswith(MANIFEST_SUFFIXES):
        return "manifest"
    return "archive"


def iter_items(source: str, problems: list[dict], max_bytes: int = 2**31) -> Iterator[Item]:
    """Every item of a source, in a stable order; listing problems are appended to ``problems``.

    Args:
        max_bytes: archive members larger than this are quarantined unread
            (files are checked where they are read).
    """
    kind = source_kind(source)
    log.info("ingest: %s source %s", kind, source)
    if kind == "archive":
        yield from _archive_items(source, problems, max_bytes)
    else:
        yield from {"folder": _folder_items, "cifar": _cifar_items, "manifest": _manifest_items}[kind](
            source, problems)


# folders ------------------------------------------------------------------------------------

def _folder_items(root: str, problems: list[dict]) -> Iterator[Item]:
    """Files under a folder, recursively; labels from the first-level subfolder.

    When every first-level entry is a split folder (``train/cat/1.jpg``, ``test/cat/9.jpg``),
    the split comes from it and the label from the level below. Hidden entries are
    skipped; ``x.mask.png`` is the mask of its sibling ``x.*``.
    """
    files = _walk_uri(root) if is_uri(root) else _walk_local(root, problems)
    by_stem = {}
    for rel in files:
        stem, _ = posixpath.splitext(rel)
        if stem.endswith(MASK_SUFFIX):
            by_stem[stem[:-len(MASK_SUFFIX)]] = rel
    masked = set(by_stem.values())
    split_dirs = files and all("/" in rel and _split_name(rel.partition("/")[0]) for rel in files)
    prefix = root.rstrip("/") + "/"  # URIs and local paths both join with "/" here (no Windows paths)
    for rel in files:
        if rel in masked:
            continue
        top, _, below = rel.partition("/")
        split = _split_name(top) if split_dirs else None
        label, sep, _ = (below if split else rel).partition("/")
        path = prefix + rel
        mask = by_stem.get(posixpath.splitext(rel)[0]) if by_stem else None
        yield path, label if sep else None, path, None if mask is None else prefix + mask, split


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


def _walk_uri(root: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, base = _filesystem(root)
    base = base.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    rels = [i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File]
    return sorted(r for r in rels if not any(p.startswith(".") for p in r.split("/")))


# archives -----------------------------------------------------------------------------------

def _archive_items(path: str, problems: list[dict], max_bytes: int) -> Iterator[Item]:
    """Members of a tar, tar.gz or zip archive, streamed; nothing is extracted to disk.

    Labels come from the first folder inside the archive, below a top folder
    named like the archive itself (``train.tar.gz`` holding ``train/cat/1.jpg``
    gives ``cat``). A member under a split folder there (``data.tar`` holding
    ``data/test/cat/9.jpg``) takes its split from it and its label from the level
    below; decided member by member, as the archive is streamed. Members with
    absolute or ``..`` paths, and links, are quarantined and never read.
    """
    stem = os.path.basename(path.rstrip("/")).split(".")[0]
    with _open_input(path) as fh:
        head = fh.read(4)
        fh.seek(0)
        if head == b"PK\x03\x04":
            yield from _zip_items(path, fh, stem, problems, max_bytes)
        else:
            try:
                archive = tarfile.open(fileobj=fh, mode="r|*")
            except tarfile.TarError as err:
                raise ValueError(f"source {path!r} is not a folder, manifest or tar/zip archive: {err}") from None
            with archive:
                for member in archive:
                    if member.isdir():
                        continue
                    item = _member_item(path, member.name, stem, member.issym() or member.islnk(),
                                        not member.isfile(), member.size, max_bytes, problems)
                    if item is not None:
                        source, label, split = item
                        yield source, label, archive.extractfile(member).read(), None, split


def _zip_items(path: str, fh, stem: str, problems: list[dict], max_bytes: int) -> Iterator[Item]:
    with zipfile.ZipFile(fh) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            link = stat.S_ISLNK(info.external_attr >> 16)
            item = _member_item(path, info.filename, stem, link, False, info.file_size, max_bytes, problems)
            if item is None:
                continue
            source, label, split = item
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, OSError, NotImplementedError) as err:
                problems.append(quarantine_row(source, "decode_error", f"{type(err).__name__}: {err}"))
                continue
            yield source, label, data, None, split


def _member_item(archive: str, name: str, stem: str, link: bool, special: bool, size: int, max_bytes: int,
                 problems: list[dict]) -> tuple[str, str | None, str | None] | None:
    """``(source, label, split)`` of a safe, visible archive member, else None (unsafe ones are quarantined)."""
    source = f"{archive}!/{name}"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        problems.append(quarantine_row(source, "unsafe_path", "archive member path is absolute or leaves the archive"))
        return None
    if link or special:
        problems.append(quarantine_row(source, "unsafe_path", "archive member is a link or special file"))
        return None
    if size > max_bytes:
        problems.append(quarantine_row(source, "too_large", f"{size} bytes exceeds ingest.max_file_mb"))
        return None
    parts = [p for p in parts if p != "."]
    if not parts or any(p.startswith(".") for p in parts):
        return None
    if len(parts) > 1 and parts[0] == stem:
        parts = parts[1:]
    split = _split_name(parts[0]) if len(parts) > 1 else None
    if split:
        parts = parts[1:]
    return source, parts[0] if len(parts) > 1 else None, split


# CIFAR --------------------------------------------------------------------------------------

class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data only: numbers, strings, bytes, lists, dicts and numeric numpy arrays."""

    def find_class(self, module, name):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                              ("numpy", "ndarray")}:
            return np.ndarray if name == "ndarray" else _reconstruct
        if (module, name) == ("numpy", "dtype"):
            return _dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("refusing to unpickle an ndarray subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _dtype(spec, align=False, copy=False):
    dt = np.dtype(spec)
    if dt.hasobject or dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"refusing to unpickle an array of {dt}")
    return dt


def _latin1(text, encoding="latin1"):
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing to encode with {encoding}")
    return text.encode("latin1")


def load_pickle(data: bytes):
    """Unpickle plain data (see ``_SafeUnpickler``); raises ``pickle.UnpicklingError`` for anything else."""
    return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def _key(d: dict, name: str):
    return d[name.encode()] if name.encode() in d else d[name]


def _cifar_items(root: str, problems: list[dict]) -> Iterator[Item]:
    """Images of a CIFAR-10 / CIFAR-100 batch directory, python-pickle or binary format."""
    names = set(_list_dir(root))
    for meta, (names_key, labels_key) in _CIFAR_PY.items():
        if meta in names:
            yield from _cifar_python(root, meta, names_key, labels_key, sorted(names), problems)
            return
    for meta, label_bytes in _CIFAR_BIN.items():
        if meta in names:
            yield from _cifar_binary(root, meta, label_bytes, sorted(names), problems)
            return


def _cifar_python(root, meta, names_key, labels_key, names, problems) -> Iterator[Item]:
    classes = None
    for name in [meta] + [n for n in names if n.startswith(("data_batch", "test_batch")) or n in ("train", "test")]:
        path, split = _join(root, name), _cifar_split(name)
        data = read_bytes(path)
        try:
            batch = load_pickle(data)
            if name == meta:
                classes = [c.decode() if isinstance(c, bytes) else c for c in _key(batch, names_key)]
                continue
            pixels = np.asarray(_key(batch, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = list(_key(batch, labels_key))
            if len(labels) != len(pixels):
                raise ValueError(f"{len(labels)} labels for {len(pixels)} images")
        except pickle.UnpicklingError as err:
            problems.append(quarantine_row(path, "unsafe_pickle", str(err), hashlib.sha256(data).hexdigest()))
            continue
        except (KeyError, ValueError, TypeError, EOFError, pickle.PickleError) as err:
            problems.append(quarantine_row(path, "decode_error", f"not a CIFAR batch: {type(err).__name__}: {err}",
                                           hashlib.sha256(data).hexdigest()))
            continue
        for i, (img, label) in enumerate(zip(pixels, labels)):
            yield f"{path}#{i}", _class_name(classes, label), np.ascontiguousarray(img), None, split


def _cifar_binary(root, meta, label_bytes, names, problems) -> Iterator[Item]:
    classes = [line.strip() for line in read_bytes(_join(root, meta)).decode().splitlines() if line.strip()]
    record = label_bytes + 3072
    for name in [n for n in names if n.endswith(".bin")]:
        path, split = _join(root, name), _cifar_split(name)
        data = read_bytes(path)
        if not data or len(data) % record:
            problems.append(quarantine_row(path, "decode_error",
                                           f"{len(data)} bytes is not a whole number of {record}-byte records",
                                           hashlib.sha256(data).hexdigest()))
            continue
        rows = np.frombuffer(data, np.uint8).reshape(-1, record)
        labels = rows[:, label_bytes - 1]  # CIFAR-100: coarse then fine label; the fine one is kept
        pixels = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for i, (img, label) in enumerate(zip(pixels, labels)):
            yield f"{path}#{i}", _class_name(classes, int(label)), np.ascontiguousarray(img), None, split


def _class_name(classes: list[str] | None, label) -> str:
    return classes[label] if classes and 0 <= label < len(classes) else str(label)


def _cifar_split(name: str) -> str | None:
    """``train`` for a ``data_batch_*`` / ``train`` batch, ``test`` for a ``test_batch`` / ``test`` one."""
    stem = name.removesuffix(".bin")
    if stem.startswith("data_batch") or stem == "train":
        return "train"
    return "test" if stem.startswith("test_batch") or stem == "test" else None


# manifests ----------------------------------------------------------------------------------

def _manifest_items(path: str, problems: list[dict]) -> Iterator[Item]:
    """Rows of a CSV or Parquet manifest: ``path`` (relative to the manifest), optional ``label``, ``mask``, ``split``.

    A row whose ``split`` is not a split name (train, val, test; valid, validation) is quarantined.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with _open_input(path) as fh:
        if path.lower().endswith(".csv"):
            table = pacsv.read_csv(fh, convert_options=pacsv.ConvertOptions(
                column_types={"path": "string", "label": "string", "mask": "string", "split": "string"},
                strings_can_be_null=True))
        else:
            table = pq.read_table(fh)
    if "path" not in table.column_names:
        raise ValueError(f"manifest {path!r} has no 'path' column (columns: {', '.join(table.column_names)})")
    base = posixpath.dirname(path) if is_uri(path) else os.path.dirname(os.path.abspath(path))
    cols = table.to_pydict()
    labels = cols.get("label") or [None] * table.num_rows
    masks = cols.get("mask") or [None] * table.num_rows
    splits = cols.get("split") or [None] * table.num_rows
    for i, (rel, label, mask, given) in enumerate(zip(cols["path"], labels, masks, splits)):
        if not rel:
            problems.append(quarantine_row(f"{path}#{i}", "unreadable", "manifest row has no path"))
            continue
        split = _split_name(given) if given else None
        if given and split is None:
            problems.append(quarantine_row(f"{path}#{i}", "bad_split",
                                           f"split {given!r} of {rel} is not train, val (valid, validation) or test"))
            continue
        full = _resolve(base, rel)
        yield full, None if label is None else str(label), full, _resolve(base, mask) if mask else None, split


def _resolve(base: str, rel: str) -> str:
    if is_uri(rel) or os.path.isabs(rel):
        return rel
    return posixpath.join(base, rel) if is_uri(base) else os.path.normpath(os.path.join(base, rel))
