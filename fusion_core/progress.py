"""Progress of a long loop: a tqdm bar on an interactive terminal, periodic log lines otherwise, and the
figures for any listener (the flows layer mirrors them into Prefect)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Called as listener(what, done, total) on every update and at the close; total is None until known.
# A listener that does slow work (an API call) throttles itself.
listeners: list[Callable[[str, int, int | None], None]] = []


class Progress:
    """Counts done units against a total (which may become known late) and reports rate and ETA.

    Args:
        what: name shown before the figures, e.g. ``"ingest"``.
        unit: what is counted, e.g. ``"files"``.
        total: units to do, when known.
        every_s: seconds between log lines when not on a terminal.
    """

    def __init__(self, what: str, unit: str, total: int | None = None, every_s: float = 5.0, stream=None):
        self.what, self.unit, self.total, self.every_s = what, unit, total, every_s
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done, self.started, self.last = 0, time.perf_counter(), 0.0
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=f" {unit}", file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units done and report if it is time to."""
        self.done += n
        self._tell_listeners()
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.update(n)
        elif now - self.last >= self.every_s:
            log.info("%s", self.line())
            self.last = now

    def close(self) -> None:
        """Report the final figures (ends the terminal line)."""
        self._tell_listeners()
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.close()
        else:
            log.info("%s", self.line())

    def _tell_listeners(self) -> None:
        for listener in listeners:
            listener(self.what, self.done, self.total)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            left = max(self.total - self.done, 0)
            eta = f"ETA {left / rate:.0f}s" if rate else "ETA ?"
            return f"{self.what}: {self.done}/{self.total} {self.unit} ({rate:.0f}/s, {eta})"
        return f"{self.what}: {self.done} {self.unit} ({rate:.0f}/s)"
