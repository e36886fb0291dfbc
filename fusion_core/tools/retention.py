"""Retention: ``fusion gc --keep N`` keeps the store's growth bounded.

It keeps the N newest runs (and any run still going) with everything they need: the dataset versions
their stages made or used and the versions those were derived from, their result rows, reports and
training checkpoints. The champion model's training data, the newest version of every dataset and each
dataset's current result are kept too. Everything else goes: older dataset versions (a shard only when
no kept version lists it), their result rows, reports and checkpoints. Models are never removed, so a
rollback always works; run records stay as history.
"""

from __future__ import annotations

import logging

from fusion_core import uri
from fusion_core.data.publish import published_version
from fusion_core.learning.train_loop import train_run_name
from fusion_core.store import Store

log = logging.getLogger(__name__)

DATASETS = ("images", "pixels", "predictions", "clusters", "mining")
STAGE_OUTPUT = {"ingest": "images", "preprocess": "pixels", "infer": "predictions", "cluster": "clusters",
                "mine": "mining"}
DERIVED_FROM = {"pixels": ("images", "images_version"), "predictions": ("pixels", "pixels_version"),
                "clusters": ("predictions", "predictions_version"), "mining": ("predictions", "predictions_version")}


def collect_garbage(store: Store, keep: int, dry_run: bool = False) -> dict:
    """Remove what the ``keep`` newest runs do not need; returns counts of what was (or would be) removed.

    Raises:
        ValueError: ``keep`` is below 1.
    """
    if keep < 1:
        raise ValueError(f"gc: --keep must be at least 1 (got {keep})")
    runs = store.list_runs(limit=None)
    kept = runs[:keep] + [r for r in runs[keep:] if r["status"] == "running"]
    kept_ids = {r["run_id"] for r in kept}
    details = [store.get_run(r["run_id"]) for r in kept]
    versions = {name: {v["version"]: v for v in store.list_versions(name)} for name in DATASETS}
    needed = _needed_versions(store, details, versions)
    removed = {"runs_kept": len(kept_ids)}
    for name in DATASETS:
        gone = sorted(set(versions[name]) - needed[name])
        kept_paths = {s["path"] for v in needed[name] if v in versions[name] for s in versions[name][v]["shards"]}
        files = sorted({s["path"] for v in gone for s in versions[name][v]["shards"]} - kept_paths)
        removed[f"{name}_versions"], removed[f"{name}_shards"] = len(gone), len(files)
        if not dry_run and gone:
            store.delete_versions(name, gone)
            for path in files:
                uri.delete_file(store.path(path))
    table_runs = {(s["outputs"] or {}).get("table_run_id") for run in details for s in run["stages"]} | kept_ids
    reports = [r for r in _folders(store, "reports") if r not in kept_ids]
    checkpoints = [c for c in _folders(store, "checkpoints") if c not in _checkpoint_names(store, details)]
    removed["reports"], removed["checkpoints"] = len(reports), len(checkpoints)
    if not dry_run:
        removed["result_rows"] = sum(store.delete_results_except(table_runs - {None}).values())
        for folder in [f"reports/{r}" for r in reports] + [f"checkpoints/{c}" for c in checkpoints]:
            uri.delete_dir(store.path(folder))
    log.info("gc: %s", removed)
    return removed


def _needed_versions(store: Store, runs: list[dict], versions: dict[str, dict[int, dict]]) -> dict[str, set[int]]:
    """Per dataset, the versions kept runs, the champion and readers need, with what they derive from."""
    needed: dict[str, set[int]] = {name: set() for name in DATASETS}
    for run in runs:
        for stage in run["stages"]:
            if stage["stage"] in STAGE_OUTPUT and (stage["outputs"] or {}).get("version") is not None:
                needed[STAGE_OUTPUT[stage["stage"]]].add(stage["outputs"]["version"])
    champion = store.champion()
    if champion is not None and champion["dataset_version"] is not None:
        needed["pixels"].add(champion["dataset_version"])
    for name in DATASETS:
        if versions[name]:
            needed[name].add(max(versions[name]))
        current = published_version(store, name)
        if current is not None:
            needed[name].add(current)
    for name in ("mining", "clusters", "predictions", "pixels"):  # downstream first: sources of sources count
        source, field = DERIVED_FROM[name]
        for version in list(needed[name]):
            parent = (versions[name].get(version) or {}).get("info", {}).get(field)
            if parent is not None:
                needed[source].add(parent)
    return needed


def _checkpoint_names(store: Store, runs: list[dict]) -> set[str]:
    """Ray Train run folders of the kept runs' trainings (named per run, or per data and settings)."""
    names = set()
    for run in runs:
        names.add(train_run_name("", run["run_id"], "always"))
        for stage in run["stages"]:
            version = (stage["outputs"] or {}).get("model_version") if stage["stage"] == "train" else None
            model = store.get_model(version) if version is not None else None
            if model is not None and model["key"]:
                names.add(train_run_name(model["key"], run["run_id"], "on_new_data"))
        if run["status"] == "running" or any(s["status"] != "completed" for s in run["stages"]):
            names.add("*")  # a training that has not finished may resume from any folder: keep them all
    return names if "*" not in names else set(_folders(store, "checkpoints"))


def _folders(store: Store, under: str) -> list[str]:
    folder = store.path(under)
    return sorted(uri.list_dir(folder)) if uri.kind(folder) == "dir" else []
