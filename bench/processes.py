"""The process table as the benchmarks read it from /proc: who descends from whom, sessions, names (Linux)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    parent: int
    session: int
    zombie: bool
    name: str  # the first word of its command line (Ray's workers: ``ray::<task or actor>``)


def processes() -> list[Proc]:
    """Every process now, skipping those that end while being read."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            name = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            found.append(Proc(int(stat.parent.name), int(fields[1]), int(fields[3]), fields[0] == "Z", name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(root: int, table: list[Proc] | None = None) -> list[Proc]:
    """``root`` and every process below it."""
    table = processes() if table is None else table
    children: dict[int, list[Proc]] = {}
    for proc in table:
        children.setdefault(proc.parent, []).append(proc)
    found = [p for p in table if p.pid == root]
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def session(sid: int) -> list[Proc]:
    """The live processes of a session (a process started with ``start_new_session`` and all it starts, even those
    that moved to process groups of their own or lost their parent)."""
    return [p for p in processes() if p.session == sid and not p.zombie]
