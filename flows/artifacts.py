"""What a run shows in the Prefect UI besides logs: artifacts.

Each stage publishes a markdown summary (the headlines and figures ``fusion show`` prints), a table of
each row list it returns (``comparison``: holdout metrics of challenger vs champion; ``checks``: drift
checks) and a link to the HTML report it wrote; a completed run publishes its whole account; long loops
keep a progress artifact up to date.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

from flows.terminal import describe_run, headlines, stage_lines
from fusion_core import progress, uri

TABLES = {"comparison": "holdout metrics, challenger vs champion", "checks": "drift checks"}  # output -> what


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes): ``fusion-<parts>``."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(("fusion", *parts)).lower()).strip("-")


def publish_stage(stage: str, result: dict, message: str | None = None) -> None:
    """Publish a stage's summary, its row lists as tables and its report as a link."""
    create_markdown_artifact(stage_markdown(stage, result, message), key=artifact_key(stage, "summary"),
                             description=f"{stage} stage")
    outputs = result["outputs"]
    for name, what in TABLES.items():
        if outputs.get(name):
            create_table_artifact(outputs[name], key=artifact_key(stage, name), description=what)
    if outputs.get("report"):
        create_link_artifact(report_link(outputs["report"]), link_text="HTML report", key=artifact_key("report"),
                             description="the run's report")


def publish_run(run: dict, store) -> None:
    """Publish a finished run's account, as ``fusion show`` prints it."""
    create_markdown_artifact(f"```\n{describe_run(run, store)}\n```", key=artifact_key(run["flow"], "run"),
                             description=f"{run['flow']} run {run['run_id']}")


def stage_markdown(stage: str, result: dict, message: str | None = None) -> str:
    """A stage's headline (when it has one) and its counts, metrics and outputs."""
    row = {"stage": stage, "status": "completed", "error": None, **result}
    lines = [f"### {stage}: completed" + (f", {message}" if message else ""), ""]
    lines += [f"* {line}" for line in headlines({stage: result})]
    return "\n".join(lines + ["", "```", *(line.strip() for line in stage_lines(row)[1:]), "```"])


def report_link(report: str) -> str:
    """A link to a report: a URI as it is, a local path as a ``file://`` URL."""
    return report if uri.is_uri(report) else Path(report).resolve().as_uri()


class ProgressArtifacts:
    """A progress listener (``fusion_core.progress``) that keeps one Prefect progress artifact per counter,
    updated at most every ``every_s`` seconds and once at the end."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.shown: dict[str, tuple] = {}  # what -> (artifact id, percent shown, when)

    def __call__(self, what: str, done: int, total: int | None) -> None:
        if not total:
            return
        percent, now = round(min(100.0 * done / total, 100.0), 1), time.monotonic()
        description = f"{what}: {done}/{total}"
        if what not in self.shown:
            artifact = create_progress_artifact(percent, key=artifact_key(what, "progress"), description=description)
            self.shown[what] = (artifact, percent, now)
            return
        artifact, shown, when = self.shown[what]
        if percent != shown and (percent == 100.0 or now - when >= self.every_s):
            update_progress_artifact(artifact, percent, description=description)
            self.shown[what] = (artifact, percent, now)


@contextmanager
def progress_artifacts() -> Iterator[None]:
    """Mirror the progress of long loops into Prefect progress artifacts while the block runs."""
    listener = ProgressArtifacts()
    progress.listeners.append(listener)
    try:
        yield
    finally:
        progress.listeners.remove(listener)
