"""Progress reporting: a tqdm bar on a terminal, log lines otherwise."""

from __future__ import annotations

import io
import logging

from fusion_core.progress import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal():
    out = _Tty()
    progress = Progress("ingest", "files", total=10, stream=out)
    progress.update(5)
    progress.update(5)
    progress.close()
    text = out.getvalue()
    final = text.rstrip("\n").split("\r")[-1]
    assert text.endswith("\n") and final.startswith("ingest: 100%") and "10/10" in final and "files/s" in final


def test_progress_logs_when_not_a_terminal(caplog):
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="fusion_core.progress"):
        progress = Progress("ingest", "files", every_s=0.0, stream=out)
        progress.update(3)
        progress.total = 4
        progress.update(1)
        progress.close()
    assert out.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("ingest: 3 files (")
    assert lines[-1].startswith("ingest: 4/4 files (") and "ETA 0s" in lines[-1]


def test_listeners_get_every_update_and_the_close(monkeypatch):
    import fusion_core.progress as progress_module

    heard = []
    monkeypatch.setattr(progress_module, "listeners", [lambda *figures: heard.append(figures)])
    progress = Progress("preprocess", "tasks", stream=io.StringIO())
    progress.update(2)
    progress.total = 5
    progress.update(3)
    progress.close()
    assert heard == [("preprocess", 2, None), ("preprocess", 5, 5), ("preprocess", 5, 5)]
