"""Paths and URIs: the one place that turns a local path or an object-store URI into a filesystem.

Every artifact Fusion reads or writes (the store's shards, models and reports, and the sources it
ingests) goes through these functions, so a local folder and ``s3://``, ``gs://`` or any
``fsspec`` URI behave alike. Paths join with ``/`` (no Windows paths).
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import shutil
import stat

import pyarrow.fs as pafs


class FileTooLargeError(ValueError):
    """A file holds more bytes than the caller allows; ``size`` is how many it holds."""

    def __init__(self, message: str, size: int | None = None):
        super().__init__(message)
        self.size = size


def is_uri(path: str) -> bool:
    """True for ``scheme://...``, False for a local path."""
    return "://" in path


def without_scheme(path: str) -> str:
    """``path`` without its ``scheme://``, if it has one."""
    return path.split("://", 1)[-1]


_LOCAL = pafs.LocalFileSystem()


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` for a local path or URI.

    Schemes pyarrow does not know are served through ``fsspec``. For ``s3://``, pyarrow reads the
    endpoint (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``http://`` allowed), region and
    credentials from the standard ``AWS_*`` environment.
    """
    return (_LOCAL, os.path.abspath(path)) if not is_uri(path) else _remote(path)


@functools.lru_cache(maxsize=64)
def _remote(path: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(path)
    except (ValueError, OSError):  # a scheme pyarrow does not know: ask fsspec
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), inner


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def kind(path: str) -> str:
    """``dir``, ``file`` or ``missing``."""
    if not is_uri(path):
        return "dir" if os.path.isdir(path) else "file" if os.path.isfile(path) else "missing"
    fs, inner = filesystem(path)
    found = fs.get_file_info(inner).type
    return {pafs.FileType.Directory: "dir", pafs.FileType.File: "file"}.get(found, "missing")


def is_file(path: str) -> bool:
    return kind(path) == "file"


def list_dir(path: str) -> list[str]:
    """Names of the entries of a folder."""
    if not is_uri(path):
        return os.listdir(path)
    fs, inner = filesystem(path)
    return [posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(inner))]


def walk_files(root: str) -> list[str]:
    """Relative paths of every file below a folder, sorted, hidden entries left out."""
    fs, base = filesystem(root)
    base = base.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    rels = [i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File]
    return sorted(r for r in rels if not any(p.startswith(".") for p in r.split("/")))


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a local file or of a URI.

    Raises:
        FileTooLargeError: the file holds more than ``max_bytes``.
        OSError: the file cannot be read.
    """
    if not is_uri(path):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = os.read(fd, 1 << 16)  # most images: one read, no stat
            if len(data) < 1 << 16:
                _check_size(len(data), max_bytes)
                return data
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
            _check_size(st.st_size, max_bytes)
            with open(fd, "rb", closefd=False) as fh:
                return data + fh.read()
        finally:
            os.close(fd)
    fs, inner = filesystem(path)
    if max_bytes is not None:
        _check_size(fs.get_file_info(inner).size or 0, max_bytes)
    with fs.open_input_stream(inner) as fh:
        return fh.readall()


def _check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise FileTooLargeError(f"{size} bytes exceeds the limit of {max_bytes} bytes", size)


def open_input(path: str):
    """A binary file object (seekable where the filesystem allows) for a local path or URI."""
    if not is_uri(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    return fs.open_input_file(inner)


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file, creating its folder."""
    fs, inner = filesystem(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as fh:
        fh.write(data)


def upload(local: str, path: str) -> None:
    """Copy a local file to a path or URI, creating its folder."""
    fs, inner = filesystem(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    with open(local, "rb") as src, fs.open_output_stream(inner) as dst:
        shutil.copyfileobj(src, dst)


def local_file(path: str, workdir: str) -> str:
    """A local path holding the file at ``path``: the path itself when local, else a copy in ``workdir``."""
    fs, inner = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        return inner
    local = os.path.join(workdir, posixpath.basename(inner))
    with fs.open_input_stream(inner) as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return local


def delete_file(path: str) -> None:
    fs, inner = filesystem(path)
    fs.delete_file(inner)


def delete_dir(path: str) -> None:
    """Remove a folder and everything in it (nothing to do when there is none)."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        fs.delete_dir(inner)


def link_or_copy(src: str, dst: str) -> None:
    """``dst`` as a hard link to ``src`` on a local disk, else a copy made by the filesystem itself
    (server-side on object stores)."""
    fs, source = filesystem(src)
    target = filesystem(dst)[1]
    fs.create_dir(posixpath.dirname(target), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            os.link(source, target)
            return
        except OSError:  # another device, or links not supported: copy
            pass
    fs.copy_file(source, target)


def move(src: str, dst: str) -> None:
    """Rename a file or folder ``src`` to ``dst`` on one filesystem (atomic where the filesystem allows;
    object stores cannot rename a folder, so it moves there file by file); ``dst``'s folder is made."""
    fs, inner = filesystem(src)
    target = filesystem(dst)[1]
    fs.create_dir(posixpath.dirname(target), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem) or fs.get_file_info(inner).type != pafs.FileType.Directory:
        fs.move(inner, target)
        return
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
        if info.type == pafs.FileType.File:
            fs.copy_file(info.path, target + info.path[len(inner):])
    fs.delete_dir(inner)
