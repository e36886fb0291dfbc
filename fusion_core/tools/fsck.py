"""``fusion fsck``: prove a store consistent with its catalog, and find what no commit references.

Errors are what a reader could trip on: a committed shard that is missing, has other rows, other bytes or
another schema than the catalog recorded; a model or report the catalog names but the store lacks; a result
row that points at a run or model the catalog does not hold. Orphans are files written but never committed
(an interrupted writer's shards, temporary files, staging folders, unregistered models, reports of unknown
runs); no reader sees them. ``--repair`` moves them into ``lost+found/<date>/`` under the store root, where
they keep their paths and can be moved back, and touches nothing a catalog row names in any path form;
``empty_lost_found`` deletes what earlier repairs moved there. ``--repair`` also records the checksum of shards
committed before checksums existed and closes runs whose process died.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from fusion_core import uri
from fusion_core.data.publish import CURRENT, VERSION_FILE
from fusion_core.store import Store
from fusion_core.store.datasets import IMAGES_SCHEMA, pixels_schema, shard_checksum

log = logging.getLogger(__name__)

TOP_FOLDERS = ("datasets", "models", "reports")  # checkpoints belong to `fusion gc`: they are resumable state
LOST_FOUND = "lost+found"  # where --repair moves orphans: lost+found/<date>/<their path in the store>


@dataclass
class Finding:
    """One problem: ``kind`` (missing, rows, checksum, schema, model, report, dangling, orphan), where, what."""

    kind: str
    path: str
    detail: str

    @property
    def is_error(self) -> bool:
        return self.kind != "orphan"


@dataclass
class FsckResult:
    shards: int = 0
    findings: list[Finding] = field(default_factory=list)
    unchecked: list[tuple[str, str]] = field(default_factory=list)  # (dataset, path) committed without a checksum
    abandoned: list[str] = field(default_factory=list)  # runs whose process died
    live_runs: list[str] = field(default_factory=list)
    repaired: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]

    @property
    def orphans(self) -> list[Finding]:
        return [f for f in self.findings if not f.is_error]

    def summary(self) -> str:
        state = "clean" if not self.errors else f"{len(self.errors)} errors"
        moved = self.repaired.get("orphans_moved")
        extra = [f"{len(self.orphans)} orphan files", f"{len(self.unchecked)} shards without a checksum",
                 f"{len(self.abandoned)} abandoned runs"]
        repaired = (f"; repaired: {', '.join(f'{k}={v}' for k, v in self.repaired.items() if k != 'lost_found')}"
                    if self.repaired else "")
        where = f" (into {self.repaired['lost_found']})" if moved else ""
        return f"fsck: {state}: {self.shards} shards checked, {', '.join(extra)}{repaired}{where}"


def check_store(store: Store, repair: bool = False) -> FsckResult:
    """Check every committed shard, model, report and result row of ``store``; with ``repair``, move orphans
    into ``lost+found/<date>/``, record missing checksums and close abandoned runs.

    Raises:
        RuntimeError: ``repair`` while a run is live (its uncommitted files are not orphans yet).
    """
    result = FsckResult()
    runs = store.list_runs(limit=None)
    result.live_runs = [r["run_id"] for r in runs if r["status"] == "running"]
    result.abandoned = [r["run_id"] for r in runs if r["status"] == "abandoned"]
    if repair and result.live_runs:
        raise RuntimeError(f"fsck --repair: run {result.live_runs[0]} is live on this store; its files are not "
                           f"committed yet. Repair when it has ended")
    committed = _check_shards(store, result)
    models = store.list_models()
    referenced = _check_models_and_reports(store, models, runs, result)
    _check_result_rows(store, {r["run_id"] for r in runs}, {m["version"] for m in models}, result)
    _find_orphans(store, committed, referenced, {r["run_id"] for r in runs}, result)
    if repair:
        result.repaired = _repair(store, result)
    return result


def _check_shards(store: Store, result: FsckResult) -> set[str]:
    """Each committed shard once: exists, row count, checksum, schema. Returns the committed paths."""
    seen: set[str] = set()
    for dataset in store.dataset_names():
        for version in store.list_versions(dataset):
            for shard in version["shards"]:
                if shard["path"] in seen:
                    continue
                seen.add(shard["path"])
                result.shards += 1
                problem = _shard_problem(store, dataset, version, shard)
                if problem:
                    result.findings.append(Finding(problem[0], shard["path"], f"{dataset} v{version['version']}: "
                                                                              f"{problem[1]}"))
                elif not shard["checksum"]:
                    result.unchecked.append((dataset, shard["path"]))
    return seen


def _shard_problem(store: Store, dataset: str, version: dict, shard: dict) -> tuple[str, str] | None:
    path = store.path(shard["path"])
    if not uri.is_file(path):
        return "missing", "committed shard is missing"
    try:
        with uri.open_input(path) as f:
            footer = pq.ParquetFile(f)
            rows, schema = footer.metadata.num_rows, footer.schema_arrow
    except Exception as err:  # any unreadable footer is this shard's problem, not fsck's
        return "schema", f"not a readable Parquet file ({type(err).__name__}: {err})"
    if rows != shard["num_rows"]:
        return "rows", f"{rows} rows, the catalog recorded {shard['num_rows']}"
    if shard["checksum"] and shard_checksum(store.root, shard["path"]) != shard["checksum"]:
        return "checksum", "content differs from the checksum recorded at commit"
    declared = _declared_schema(dataset, version["info"])
    tag = (schema.metadata or {}).get(b"fusion.dataset")
    if tag is not None and tag.decode() != dataset:
        return "schema", f"a {tag.decode()} shard, listed as {dataset}"
    if declared is not None and not schema.remove_metadata().equals(declared.remove_metadata()):
        return "schema", f"schema {schema.names} differs from the declared {declared.names}"
    return None


def _declared_schema(dataset: str, info: dict):
    if dataset == "images":
        return IMAGES_SCHEMA
    if dataset == "pixels" and info.get("shape"):
        return pixels_schema(*info["shape"])
    return None


def _check_models_and_reports(store: Store, models: list[dict], runs: list[dict], result: FsckResult) -> set[str]:
    """Every model and report the catalog names exists; returns those paths, relative to the store root."""
    referenced = set()
    for model in models:
        referenced.add(store.relative(model["path"]))
        if not uri.is_file(model["path"]):
            result.findings.append(Finding("model", model["path"], f"model v{model['version']} is missing"))
    for run in runs:
        for stage in store.get_run(run["run_id"])["stages"]:
            report = (stage["outputs"] or {}).get("report")
            if stage["status"] == "completed" and report:
                referenced.add(store.relative(report))
                if not uri.is_file(report):
                    result.findings.append(Finding("report", report, f"report of run {run['run_id']} is missing"))
    return referenced


def _check_result_rows(store: Store, run_ids: set[str], models: set[int], result: FsckResult) -> None:
    """No result row or dataset version points at a run or model the catalog does not hold."""
    for table, column, values in store.result_references():
        known = run_ids if column == "run_id" else models
        for value in sorted(set(values) - known - {None}, key=str):
            result.findings.append(Finding("dangling", table, f"rows of {column} {value}, which the catalog lacks"))


def _find_orphans(store: Store, committed: set[str], referenced: set[str], run_ids: set[str],
                  result: FsckResult) -> None:
    """Files under datasets/, models/ and reports/ that no commit references (paths compared relative to the
    store root, as the catalog keeps them)."""
    if uri.kind(store.root) != "dir":
        return
    model_folders = {posixpath.dirname(p) for p in referenced}
    for top in TOP_FOLDERS:
        base = store.path(top)
        if uri.kind(base) != "dir":
            continue
        for rel in uri.walk_files(base):
            full, parts = uri.join(base, rel), rel.split("/")
            if ".tmp-" in parts[-1]:
                why = "temporary file of an interrupted write"
            elif top == "datasets" and len(parts) == 2 and f"datasets/{rel}" not in committed:
                why = "shard no committed version lists"
            elif top == "datasets" and len(parts) == 3 and parts[1].startswith(f"_{CURRENT}-"):
                why = "staging folder of an interrupted publish"
            elif top == "datasets" and len(parts) == 3 and parts[1] == CURRENT and parts[2] != VERSION_FILE \
                    and f"datasets/{parts[0]}/{parts[2]}" not in committed:
                why = "published file of no committed shard"
            elif top == "models" and f"models/{parts[0]}" not in model_folders:
                why = "model folder no registered model uses"
            elif top == "reports" and len(parts) > 1 and parts[0] not in run_ids:  # files at its top: the runs index
                why = "report of a run the catalog lacks"
            else:
                continue
            if f"{top}/{rel}" not in referenced and f"{top}/{rel}" not in committed:
                result.findings.append(Finding("orphan", full, why))


def _repair(store: Store, result: FsckResult) -> dict:
    folder = store.path(LOST_FOUND, f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H%M%S}")
    for orphan in result.orphans:
        target = uri.join(folder, store.relative(orphan.path))
        uri.move(orphan.path, target)
        log.info("fsck: moved %s (%s) to %s", orphan.path, orphan.detail, target)
    recorded = store.record_checksums({path: shard_checksum(store.root, path) for _, path in result.unchecked})
    closed = store.close_abandoned()
    return {"orphans_moved": len(result.orphans), "checksums_recorded": recorded, "runs_closed": len(closed),
            **({"lost_found": folder} if result.orphans else {})}


def empty_lost_found(store: Store) -> list[str]:
    """Delete what earlier repairs moved into ``lost+found/``; returns the files deleted (relative to it)."""
    folder = store.path(LOST_FOUND)
    if uri.kind(folder) != "dir":
        return []
    files = uri.walk_files(folder)
    uri.delete_dir(folder)
    log.info("fsck: deleted %d files from %s", len(files), folder)
    return files
