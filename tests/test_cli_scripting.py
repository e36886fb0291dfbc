"""The `fusion` command as people script against it: exit codes, one-line errors with the closest match,
machine-readable output, `latest`, source paths, images, exports, completion and help. Each test runs the
real `fusion` process on a real store (SQLite catalog, Parquet shards written by Fusion's ingest)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from conftest import _png, random_rgb, rgba_with_hole
from flows.cli import app
from fusion_core.config import IngestConfig
from fusion_core.data.sources import iter_items
from fusion_core.stages.ingest import ingest_chunk
from fusion_core.store import Store

FUSION = str(Path(sys.executable).with_name("fusion"))
COMMANDS = ["runs", "show", "models", "predictions", "clusters", "find", "similar", "exclude", "relabel", "review",
            "decisions", "images", "image", "export", "gc", "fsck", "backup", "report", "demo", "run", "serve",
            "doctor"]


def fusion(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FUSION, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100", **(env or {})})


def one_line(result: subprocess.CompletedProcess) -> str:
    (line,) = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return line


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """A store with an ingested folder (cats, dogs, one image with missing pixels), a nightly run with
    predictions and clusters, then a newer train-only run."""
    tmp = tmp_path_factory.mktemp("cli")
    src = tmp / "photos"
    for label, seeds in (("cat", (1, 2, 3)), ("dog", (4, 5))):
        (src / label).mkdir(parents=True)
        for seed in seeds:
            (src / label / f"{label}{seed}.png").write_bytes(_png(random_rgb(8, 8, seed)))
    holed, _ = rgba_with_hole(8, 8, seed=6)
    (src / "dog" / "dog6.png").write_bytes(_png(holed, "RGBA"))
    store = Store(str(tmp / "store"))
    problems = []
    out = ingest_chunk(store.root, list(iter_items(str(src), problems)), IngestConfig())
    nightly = store.start_run("nightly", {"source": str(src)}, run_id="20261130-020000-aaaaaa")
    store.commit_version("images", [{k: s[k] for k in ("path", "num_rows", "checksum")} for s in out["shards"]],
                         nightly, sources=[{"image_id": i, "source": s} for i, s in out["sources"]])
    store.record_sources([{"image_id": i, "source": s} for i, s in out["sources"]], nightly)
    ids = {Path(s).stem: i for i, s in out["sources"]}
    model = store.register_model(nightly, "seed_cnn", str(tmp / "m.keras"), "k", 1,
                                 {"accuracy": 0.8, "macro_f1": 0.79}, {"code_version": "test"})
    predicted = {"cat1": "cat", "cat2": "cat", "cat3": "..", "dog4": "dog", "dog5": "cat/dog", "dog6": "dog"}
    for stage in ("ingest", "infer", "cluster"):
        store.start_stage(nightly, stage)
        store.finish_stage(nightly, stage, "completed", counts={}, metrics={}, outputs={})
    store.replace_results("predictions", nightly, [
        {"image_id": ids[n], "model_version": model, "label": n[:3], "predicted": p, "split": "train",
         "confidence": 0.5 + 0.05 * k, "top_k": [p]} for k, (n, p) in enumerate(predicted.items())])
    store.replace_results("cluster_assignments", nightly, [
        {"image_id": ids[n], "cluster": int(n.startswith("dog")), "distance": 0.1 * k} for k, n in enumerate(ids)])
    store.replace_results("cluster_summaries", nightly, [
        {"cluster": c, "size": 3, "top_label": label, "purity": 1.0} for c, label in enumerate(("cat", "dog"))])
    store.finish_run(nightly, "completed")
    train = store.start_run("train", {}, run_id="20261130-090000-bbbbbb")
    store.finish_run(train, "completed")
    return {"root": store.root, "src": src, "nightly": nightly, "train": train, "ids": ids, "tmp": tmp}


def test_read_commands_open_an_existing_store_only(tmp_path):
    for command in (["runs"], ["show", "latest"], ["predictions", "--run", "latest"], ["images"]):
        result = fusion(*command, "--store", str(tmp_path / "typo"))
        assert result.returncode == 1, command
        assert one_line(result).startswith(f"fusion: no Fusion store at {tmp_path / 'typo'}")
    assert not (tmp_path / "typo").exists()


def test_unknown_runs_and_models_exit_1_with_the_closest_match(built):
    store = ["--store", built["root"]]
    typo = fusion("predictions", "--run", "20261130-020000-aaaaab", *store)
    assert typo.returncode == 1
    assert one_line(typo).endswith("did you mean 20261130-020000-aaaaaa? (see `fusion runs`)")
    for command in (["clusters", "--run", "nosuch"], ["show", "nosuch"], ["report", "nosuch"]):
        result = fusion(*command, *store)
        assert result.returncode == 1 and one_line(result).startswith("fusion: no run 'nosuch'"), command
    no_infer = fusion("predictions", "--run", built["train"], *store)
    assert no_infer.returncode == 1 and "has no completed infer stage" in one_line(no_infer)
    model = fusion("models", "promote", "9", *store)
    assert model.returncode == 1 and one_line(model).endswith("no model version 9; versions are 1-1")
    version = fusion("images", "--images-version", "9", *store)
    assert version.returncode == 1 and one_line(version).endswith("; it has versions 1-1")


def test_unknown_labels_splits_and_clusters_exit_1_with_the_closest(built):
    from typer.testing import CliRunner

    from flows.cli import app

    store = ["--store", built["root"]]
    asked = {("predictions", "--run", "latest", "--label", "dgo"): "--label 'dgo': not in the given labels of "
                                                                   f"run {built['nightly']}; did you mean dog?",
             ("predictions", "--predicted", "cta"): "--predicted 'cta': not in the labels of "
                                                    f"run {built['nightly']}; did you mean cat?",
             ("images", "--split", "tset"): "--split 'tset': not in the splits; did you mean test?",
             ("images", "--label", "cta"): "--label 'cta': not in the labels of images v1; did you mean cat?",
             ("clusters", "--run", "latest", "--cluster", "42"): f"--cluster 42: not in the clusters of run "
                                                                  f"{built['nightly']} (known: 0, 1)"}
    for command, says in asked.items():
        result = CliRunner().invoke(app, [*command, *store])
        assert result.exit_code == 1 and result.output.strip().startswith(f"fusion: {says}"), (command, result.output)
    known = CliRunner().invoke(app, ["predictions", "--run", "latest", "--label", "dog", *store, "-f", "json"])
    assert known.exit_code == 0 and {r["label"] for r in json.loads(known.output)} == {"dog"}
    assert len(json.loads(known.output)) == 3  # given dog; predicted dog for two of them
    least = CliRunner().invoke(app, ["predictions", "--sort", "uncertain", *store, "-f", "json"])
    confidences = [r["confidence"] for r in json.loads(least.output)]
    assert least.exit_code == 0 and confidences == sorted(confidences) and len(set(confidences)) > 1
    unsorted = CliRunner().invoke(app, ["predictions", "--sort", "size", *store])
    assert unsorted.exit_code == 2 and "choose confidence, uncertain, label, predicted" in unsorted.output
    wrong = CliRunner().invoke(app, ["predictions", "--wrong", *store, "-f", "json"])
    assert sorted((r["label"], r["predicted"]) for r in json.loads(wrong.output)) == [("cat", ".."),
                                                                                     ("dog", "cat/dog")]


def test_latest_is_the_newest_run_or_the_newest_with_the_stage(built):
    show = json.loads(fusion("show", "latest", "--store", built["root"], "--format", "json").stdout)
    assert show["run_id"] == built["train"] and show["status"] == "completed"
    rows = json.loads(fusion("predictions", "--run", "latest", "--store", built["root"], "-f", "json").stdout)
    assert {r["run_id"] for r in rows} == {built["nightly"]} and len(rows) == 6


def test_predictions_name_their_source_files_and_filter_by_glob(built):
    table = fusion("predictions", "--run", "latest", "--store", built["root"])
    assert table.returncode == 0
    header, first, *_ = table.stdout.splitlines()
    assert header.split()[0] == "path" and first.startswith(str(built["src"] / "dog" / "dog6.png"))
    cats = json.loads(fusion("predictions", "--run", "latest", "--store", built["root"], "--path", "*/cat/*",
                             "--format", "json").stdout)
    assert sorted(Path(r["path"]).name for r in cats) == ["cat1.png", "cat2.png", "cat3.png"]
    assert all(r["sources"] == [r["path"]] and len(r["image_id"]) == 64 for r in cats)
    assert fusion("predictions", "--run", "latest", "--store", built["root"], "--path", "*/CAT/*",
                  "-f", "json").stdout.strip() == "[]"
    rows = list(csv.DictReader(io.StringIO(fusion("predictions", "--run", "latest", "--store", built["root"],
                                                  "--predicted", "cat", "--limit", "2", "-f", "csv").stdout)))
    assert [r["predicted"] for r in rows] == ["cat", "cat"] and float(rows[0]["confidence"]) == 0.55
    members = json.loads(fusion("clusters", "--run", "latest", "--store", built["root"], "--cluster", "1",
                                "-f", "json").stdout)
    assert sorted(Path(r["path"]).name for r in members) == ["dog4.png", "dog5.png", "dog6.png"]
    assert sorted((r["label"], r["predicted"]) for r in members) == [("dog", "cat/dog"), ("dog", "dog"), ("dog", "dog")]


def test_runs_show_models_and_clusters_as_json_and_csv(built):
    store = ["--store", built["root"]]
    runs = json.loads(fusion("runs", *store, "--format", "json").stdout)
    assert [r["run_id"] for r in runs] == [built["train"], built["nightly"]]
    assert list(csv.DictReader(io.StringIO(fusion("runs", *store, "-f", "csv").stdout)))[1]["flow"] == "nightly"
    stages = list(csv.DictReader(io.StringIO(fusion("show", built["nightly"], *store, "-f", "csv").stdout)))
    assert [s["stage"] for s in stages] == ["ingest", "infer", "cluster"]
    (model,) = json.loads(fusion("models", *store, "-f", "json").stdout)
    assert (model["version"], model["accuracy"], model["code"]) == (1, 0.8, "test")
    summaries = json.loads(fusion("clusters", "--run", "latest", *store, "-f", "json").stdout)
    assert [(c["cluster"], c["top_label"]) for c in summaries] == [(0, "cat"), (1, "dog")]
    bad = fusion("runs", *store, "--format", "yaml")
    assert bad.returncode == 2 and one_line(bad) == "fusion: --format 'yaml': choose table, json, csv, ids"
    ids = {args: CliRunner().invoke(app, [*args, *store, "-f", "ids"]).output.split()
           for args in (("runs",), ("predictions", "--wrong"), ("models", "list"))}
    assert ids[("runs",)] == [built["train"], built["nightly"]] and ids[("models", "list")] == ["1"]
    assert sorted(ids[("predictions", "--wrong")]) == sorted([built["ids"]["cat3"], built["ids"]["dog5"]])


def test_images_lists_stored_images_with_paths_and_filters(built):
    store = ["--store", built["root"]]
    dogs = json.loads(fusion("images", "--label", "dog", *store, "-f", "json").stdout)
    assert sorted(Path(r["path"]).name for r in dogs) == ["dog4.png", "dog5.png", "dog6.png"]
    (holed,) = json.loads(fusion("images", "--imputed", *store, "-f", "json").stdout)
    assert Path(holed["path"]).name == "dog6.png" and 0 < holed["missing"] < 1
    assert (holed["height"], holed["width"], holed["channels"]) == (8, 8, 3)
    table = fusion("images", *store, "--limit", "2").stdout.splitlines()
    assert table[0].split() == ["path", "label", "split", "size", "missing", "image"]
    assert table[-1] == "(6 images in images v1, first 2 shown)"


def test_image_gives_one_image_s_lineage(built):
    store = ["--store", built["root"]]
    dog5 = built["ids"]["dog5"]
    found = json.loads(CliRunner().invoke(app, ["image", str(built["src"] / "dog" / "dog5.png"), *store,
                                                "-f", "json"]).output)
    assert found["image_id"] == dog5 and found["sources"] == [str(built["src"] / "dog" / "dog5.png")]
    assert (found["stored"]["label"], found["stored"]["size"]) == ("dog", "8x8x3")
    assert [(p["run_id"], p["predicted"]) for p in found["predictions"]] == [(built["nightly"], "cat/dog")]
    assert [c["cluster"] for c in found["clusters"]] == [1] and found["decision"] is None
    table = CliRunner().invoke(app, ["image", dog5[:8], *store])
    assert table.exit_code == 0 and table.output.startswith(f"image {dog5}\n") and "cat/dog" in table.output
    unknown = CliRunner().invoke(app, ["image", "0000000000", *store])
    assert unknown.exit_code == 1 and "no stored image '0000000000'" in unknown.output


def test_export_writes_a_folder_tree_of_links_or_pngs(built):
    out = built["tmp"] / "by-label"
    result = fusion("export", str(out), "--run", "latest", "--store", built["root"])
    assert result.returncode == 0, result.stderr
    assert one_line(result) == f"exported 6 images into 4 folders under {out} (6 linked, 0 written as PNG)"
    assert sorted(p.name for p in out.iterdir()) == ["_..", "cat", "cat_dog", "dog"]
    cats = sorted(out.joinpath("cat").iterdir())
    assert all(p.is_symlink() and p.resolve().parent == built["src"] / "cat" for p in cats[:2])
    again = fusion("export", str(out), "--run", "latest", "--store", built["root"])
    assert again.returncode == 2 and "is not empty" in one_line(again)
    copies = built["tmp"] / "by-cluster"
    fusion("export", str(copies), "--run", "latest", "--by", "cluster", "--copy", "--store", built["root"])
    from PIL import Image

    written = sorted(copies.joinpath("cluster-1").iterdir())
    assert len(written) == 3 and not any(p.is_symlink() for p in written)
    assert Image.open(written[0]).size == (8, 8)


def test_run_checks_its_inputs_before_anything_starts(tmp_path):
    started = time.monotonic()
    missing = fusion("run", "ingest", "--source", str(tmp_path / "nope"), "--store", str(tmp_path / "store"))
    assert missing.returncode == 2 and one_line(missing) == f"fusion: source '{tmp_path / 'nope'}' does not exist"
    no_store = fusion("run", "preprocess", "--store", str(tmp_path / "store"))
    assert no_store.returncode == 1 and one_line(no_store).startswith("fusion: no Fusion store at")
    typo = fusion("run", "train", "--store", str(tmp_path / "store"), "--set", "train.epoch=3")
    assert typo.returncode == 2
    assert one_line(typo) == "fusion: invalid configuration: train.epoch: no such setting; did you mean train.epochs?"
    assert time.monotonic() - started < 15 and not (tmp_path / "store").exists()


def test_errors_are_one_line_unless_verbose(tmp_path):
    (tmp_path / "catalog.db").write_bytes(b"this is not a database" * 100)
    result = fusion("runs", "--store", str(tmp_path))
    assert result.returncode == 1 and one_line(result).startswith("fusion: DatabaseError: ")
    verbose = fusion("-v", "runs", "--store", str(tmp_path))
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    misused = CliRunner().invoke(app, ["images", "--bogus"], prog_name="fusion")
    assert misused.exit_code == 2 and misused.output == "fusion: No such option: --bogus (see fusion images -h)\n"


def test_version_help_and_completion(built):
    assert fusion("--version").stdout.startswith("fusion 0.1.0")
    assert "Example" in fusion("--help").stdout
    for command in [[]] + [[c] for c in COMMANDS]:  # in this process: the same app, 20 fewer interpreters to start
        text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100"}, terminal_width=100).output
        assert "Example" in text and len(text.splitlines()) <= 40, command
    complete = {"_FUSION_COMPLETE": "complete_bash", "COMP_WORDS": f"fusion show --store {built['root']} 2026",
                "COMP_CWORD": "4"}
    assert fusion(env=complete).stdout.split() == [built["train"], built["nightly"]]
    flows = fusion(env={**complete, "COMP_WORDS": "fusion run pre", "COMP_CWORD": "2"})
    assert flows.stdout.split() == ["preprocess"]
    from flows.cli.app import complete_from, complete_label, complete_version

    ctx = SimpleNamespace(params={"store": built["root"], "config": None})
    assert {"cat", "dog"} <= set(complete_label(ctx, "")) and complete_label(ctx, "do") == ["dog"]
    assert complete_label(SimpleNamespace(params={"store": "/nowhere"}), "") == []
    assert complete_from("train", "val", "test")("t") == ["train", "test"]
    assert complete_version(ctx, "") == ["1"] and complete_version(ctx, "2") == []


def test_show_gives_the_ray_dashboard_while_a_run_lives(built, tmp_path):
    store = Store(str(tmp_path / "store"))
    run_id = store.start_run("train", {})  # this process: live
    with store.heartbeat(run_id, details=lambda: {"ray_dashboard": "http://127.0.0.1:8265"}):
        deadline = time.monotonic() + 30
        while "ray_dashboard" not in store.get_run(run_id)["params"] and time.monotonic() < deadline:
            time.sleep(0.5)
        live = fusion("show", "latest", "--store", store.root).stdout
    assert "  ray dashboard  http://127.0.0.1:8265" in live
    store.finish_run(run_id, "completed")
    assert "ray dashboard" not in fusion("show", "latest", "--store", store.root).stdout
