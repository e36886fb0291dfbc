"""Archive sources: the members of a tar, tar.gz or zip archive, streamed without extracting."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath

from fusion_core import uri
from fusion_core.data.sources.common import Item, quarantine_row, shown, split_name


def archive_items(path: str, problems: list[dict], max_bytes: int) -> Iterator[Item]:
    """Members of a tar, tar.gz or zip archive, streamed; nothing is extracted to disk.

    Labels come from the first folder inside the archive, below a top folder
    named like the archive itself (``train.tar.gz`` holding ``train/cat/1.jpg``
    gives ``cat``). A member under a split folder there (``data.tar`` holding
    ``data/test/cat/9.jpg``) takes its split from it and its label from the level
    below; decided member by member, as the archive is streamed. Members with
    absolute or ``..`` paths, and links, are quarantined and never read. An archive that cannot be read is
    quarantined whole (after the members read before the damage).
    """
    stem = os.path.basename(path.rstrip("/")).split(".")[0]
    read = 0
    try:
        with uri.open_input(path) as fh:
            head = fh.read(4)
            fh.seek(0)
            members = _zip_items(path, fh, stem, problems, max_bytes) if head == b"PK\x03\x04" else \
                _tar_items(path, fh, stem, problems, max_bytes)
            for item in members:
                read += 1
                yield item
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
            MemoryError) as err:  # MemoryError: sizes in a damaged header beyond the memory a file may take
        where = f" after {read} members" if read else ""
        problems.append(quarantine_row(path, "bad_archive", f"not a readable tar or zip archive (stopped{where}): "
                                                            f"{type(err).__name__}: {err}"))


def _tar_items(path: str, fh, stem: str, problems: list[dict], max_bytes: int) -> Iterator[Item]:
    try:
        archive = tarfile.open(fileobj=fh, mode="r|*")
    except TypeError as err:  # tarfile's reader of a gzip header cut short
        raise tarfile.ReadError(f"gzip header cut short ({err})") from None
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
    split = split_name(parts[0]) if len(parts) > 1 else None
    if split:
        parts = parts[1:]
    return shown(source), shown(parts[0]) if len(parts) > 1 else None, split
