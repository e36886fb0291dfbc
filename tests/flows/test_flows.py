"""Every flow on real Prefect (test harness), real Ray and real TensorFlow, smoke profile.

The stage tests share one store through module fixtures that run each stage once, on the versions
the stage before returned, so any test can run alone or in any order.
"""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from flows.cluster import cluster_flow
from flows.infer import infer_flow
from flows.ingest import ingest_flow
from flows.mine import mine_flow
from flows.nightly import nightly_flow
from flows.preprocess import preprocess_flow
from flows.train import train_flow
from fusion_core.config import MineConfig
from fusion_core.demo_data import generate_demo_images
from fusion_core.stages.train import holdout_copies
from fusion_core.store import Store
from fusion_core.tools.backup import copy_store
import flows.nightly as nightly

pytestmark = [pytest.mark.ray, pytest.mark.tf, pytest.mark.prefect]

IMAGES = 120  # demo_source: 10 classes x 12, plus 5 corrupt files


@pytest.fixture(autouse=True)
def _runtime(prefect_harness, ray_local):
    yield


def _overrides(root):
    return {"store.root": root}


@pytest.fixture(scope="module")
def stage_store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("stages") / "store")


@pytest.fixture(scope="module")
def ingested(demo_source, stage_store, prefect_harness, ray_local):
    return ingest_flow(str(demo_source), "smoke", _overrides(stage_store))


@pytest.fixture(scope="module")
def preprocessed(ingested, stage_store):
    return preprocess_flow("smoke", _overrides(stage_store), images_version=ingested["outputs"]["version"])


@pytest.fixture(scope="module")
def trained(preprocessed, stage_store):
    # Two workers: the cross-worker strategy (the smoke profile trains on one)
    return train_flow("smoke", {**_overrides(stage_store), "train.num_workers": 2},
                      pixels_version=preprocessed["outputs"]["version"])


@pytest.fixture(scope="module")
def inferred(trained, preprocessed, stage_store):
    # On the Ray actor pool (the nightly tests predict in-process, below infer.in_process_max).
    return infer_flow("smoke", {**_overrides(stage_store), "infer.in_process_max": 0},
                      pixels_version=preprocessed["outputs"]["version"], model_version=trained["outputs"]["model_version"])


@pytest.fixture(scope="module")
def clustered(inferred, stage_store):
    return cluster_flow("smoke", _overrides(stage_store), predictions_version=inferred["outputs"]["version"])


def test_ingest_flow(ingested, stage_store):
    result = ingested
    assert result["counts"]["new_images"] == IMAGES
    assert result["counts"]["quarantined"] == 5
    assert {"empty_file", "not_an_image"} <= set(result["counts"]["quarantine_reasons"])
    store = Store(stage_store)
    assert store.get_run(result["run_id"])["status"] == "completed"
    assert len(store.quarantine_rows(result["run_id"])) == 5
    version = store.get_version("images", result["outputs"]["version"])
    assert version["num_rows"] == IMAGES and len(version["shards"]) == 2  # files_per_task=100


def test_ingest_flow_adds_only_new_files(demo_source, tmp_path):
    root = str(tmp_path / "store")
    ingest_flow(str(demo_source), "smoke", _overrides(root))
    source = tmp_path / "src"
    shutil.copytree(demo_source, source)
    shutil.copy(sorted(source.glob("circle/*.png"))[0], source / "circle" / "same-content-other-name.png")
    pixels = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(source / "square" / "brand-new.png")

    result = ingest_flow(str(source), "smoke", _overrides(root))
    assert result["counts"]["new_images"] == 1
    assert result["counts"]["already_stored"] == IMAGES + 1
    assert result["counts"]["quarantined"] == 5  # the copies of the corrupt files, at their new paths
    store = Store(root)
    latest = store.latest_version("images")
    assert latest["version"] == result["outputs"]["version"] == 2
    assert latest["num_rows"] == IMAGES + 1 and len(latest["shards"]) == 3
    assert any(s.endswith("same-content-other-name.png") for _, s in store.known_sources())
    rerun = ingest_flow(str(source), "smoke", _overrides(root))
    assert rerun["counts"]["new_images"] == 0 and rerun["counts"]["new_quarantine_rows"] == 0
    assert rerun["outputs"]["version"] == 2


def test_preprocess_flow(preprocessed, stage_store):
    result = preprocessed
    assert result["counts"]["images"] == IMAGES and result["counts"]["new_shards"] == 2
    assert result["counts"]["imputed_images"] == 10  # one RGBA image with a hole per class
    store = Store(stage_store)
    pixels = store.get_version("pixels", result["outputs"]["version"])
    table = pq.read_table(store.path(pixels["shards"][0]["path"]))
    assert table.schema.field("pixels").type.byte_width == 32 * 32 * 3
    again = preprocess_flow("smoke", _overrides(stage_store))  # no version given: the newest images
    assert again["counts"]["new_shards"] == 0 and again["outputs"]["version"] == pixels["version"]


def test_a_stage_without_its_input_says_which_stage_to_run(tmp_path):
    with pytest.raises(LookupError, match="no images dataset .* run ingest first"):
        preprocess_flow("smoke", _overrides(str(tmp_path / "store")))
    (run,) = Store(str(tmp_path / "store")).list_runs()
    assert run["status"] == "failed"


def test_train_flow(trained, stage_store):
    result = trained
    assert result["counts"]["trained"] == 1
    assert result["outputs"]["stage"] == "champion" and result["outputs"]["model_version"] == 1
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    model = Store(stage_store).get_model(1)
    assert len(model["metrics"]["confusion_matrix"]) == 10
    assert model["metrics"]["n"] == result["counts"]["holdout_images"] > 0
    assert model["path"].endswith("model.keras")
    assert 0.0 <= model["metrics"]["ece"] <= 1.0 and model["config"]["code_version"].startswith("0.")
    from fusion_core.learning.train_loop import precision_policy

    assert {h["policy"] for h in model["metrics"]["history"]} == {precision_policy(True)}
    assert all(h["seconds"] > 0 for h in model["metrics"]["history"])


def test_infer_flow(inferred, stage_store):
    result = inferred
    assert result["counts"]["predictions"] == IMAGES
    store = Store(stage_store)
    rows = store.query("predictions", result["run_id"])
    assert len(rows) == IMAGES and all(0.0 <= r["confidence"] <= 1.0 for r in rows)
    assert all(len(r["top_k"]) == 3 and r["top_k"][0] == r["predicted"] for r in rows)
    table = pq.read_table(store.path(result["outputs"]["shards"][0]))
    assert table.schema.field("embedding").type.list_size == 512
    again = infer_flow("smoke", _overrides(stage_store))  # the newest pixels and the champion: the same inputs
    assert again["counts"]["reused"] == 1 and again["outputs"]["version"] == result["outputs"]["version"]


def test_inference_in_process_matches_the_actor_pool(inferred, preprocessed, trained, stage_store):
    from fusion_core.learning.registry import read_classes
    from fusion_core.stages.infer import _write_in_process

    store = Store(stage_store)
    pixels = store.get_version("pixels", preprocessed["outputs"]["version"])
    model_path = trained["outputs"]["model_path"]
    manifest = _write_in_process(store, [s["path"] for s in pixels["shards"]], {
        "model_path": model_path, "shape": tuple(pixels["info"]["shape"]), "classes": read_classes(model_path),
        "top_k": 3, "batch_size": 128, "root": store.root, "prefix": "datasets/predictions/in-process"})
    in_process = pq.read_table([store.path(m["path"]) for m in manifest]).to_pydict()
    pooled = {r["image_id"]: r for r in store.query("predictions", inferred["run_id"])}
    assert sorted(in_process["image_id"]) == sorted(pooled)
    for image_id, predicted, confidence in zip(in_process["image_id"], in_process["predicted"],
                                               in_process["confidence"]):
        assert predicted == pooled[image_id]["predicted"]
        assert confidence == pytest.approx(pooled[image_id]["confidence"], abs=1e-4)


def test_cluster_flow(clustered, stage_store):
    result = clustered
    assert result["counts"]["clusters"] == 10
    assert {"silhouette", "nmi", "ari"} <= set(result["metrics"])
    store = Store(stage_store)
    assert len(store.query("cluster_assignments", result["run_id"])) == IMAGES
    summaries = store.query("cluster_summaries", result["run_id"])
    assert sum(s["size"] for s in summaries) == IMAGES


def test_mine_flow_then_find(inferred, stage_store):
    """The mine stage's counts, its findings table and `fusion find` agree; a rerun reuses the result."""
    import json

    result = mine_flow("smoke", _overrides(stage_store), predictions_version=inferred["outputs"]["version"])
    store = Store(stage_store)
    mined = store.get_version("mining", result["outputs"]["version"])
    assert mined["num_rows"] == IMAGES and mined["info"]["predictions_version"] == inferred["outputs"]["version"]
    findings = store.query("findings", result["run_id"])
    kinds = {kind: [f for f in findings if f["kind"] == kind]
             for kind in ("duplicate", "leak", "label_error", "outlier", "quality")}
    counts = result["counts"]
    assert len(kinds["duplicate"]) == counts["in_duplicate_sets"] and len(kinds["leak"]) == counts["leaking"]
    assert len(kinds["label_error"]) == counts["label_issues"] and len(kinds["outlier"]) == counts["outliers"] >= 1
    labels = {p["label"] for p in store.query("predictions", inferred["run_id"])}
    assert {f["suggested"] for f in kinds["label_error"]} <= labels

    found = CliRunner().invoke(app, ["find", "outliers", "--store", stage_store, "-f", "json"])
    assert found.exit_code == 0, found.output
    rows = json.loads(found.output)
    assert len(rows) == counts["outliers"] and all(Path(r["path"]).is_file() for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    poor = json.loads(CliRunner().invoke(app, ["find", "quality", "--store", stage_store, "-f", "json"]).output)
    assert len(poor) == counts["poor_quality"] and all(r["flags"] for r in poor)
    unknown = CliRunner().invoke(app, ["find", "typos", "--store", stage_store])
    assert unknown.exit_code == 2 and "label-errors" in unknown.output

    again = mine_flow("smoke", _overrides(stage_store), predictions_version=inferred["outputs"]["version"])
    assert again["counts"]["reused"] == 1 and again["outputs"]["version"] == result["outputs"]["version"]


def test_similar_images_of_a_stored_image_and_of_a_new_file(inferred, stage_store, tmp_path):
    import json

    store = Store(stage_store)
    (image_id, sources), = store.sources_of([store.query("predictions", inferred["run_id"])[0]["image_id"]]).items()

    def similar(*args):
        done = CliRunner().invoke(app, ["similar", *args, "-k", "3", "--store", stage_store, "-f", "json"])
        assert done.exit_code == 0, done.output
        return json.loads(done.output)

    stored = similar(image_id[:10])
    assert len(stored) == 3 and image_id not in {r["image_id"] for r in stored}
    assert [r["similarity"] for r in stored] == sorted((r["similarity"] for r in stored), reverse=True)
    copy = tmp_path / "copy.png"  # the same pixels in a file the store has not seen: embedded by the model
    Image.open(sources[0]).save(copy, compress_level=1)
    found = similar(str(copy))
    assert found[0]["image_id"] == image_id and found[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    missing = CliRunner().invoke(app, ["similar", str(tmp_path / "none.png"), "--store", stage_store])
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_train_flow_best_recipe_promotion_rule_and_decisions(trained, inferred, stage_store, tmp_path):
    """On a copy of the stage store where a person excluded a holdout image and corrected a label (by path and
    by id prefix, through the command line): the best recipe trains with them applied, the champion is scored
    on the same holdout, and mining applies them too."""
    import json

    root = str(copy_store(Store(stage_store), tmp_path / "copy"))
    store = Store(root)
    rows = sorted(store.query("predictions", inferred["run_id"]), key=lambda r: r["image_id"])
    test_image, other = [r for r in rows if r["split"] == "test"][:2]
    path = store.sources_of([test_image["image_id"]])[test_image["image_id"]][0]
    new_label = next(r["label"] for r in rows if r["label"] != other["label"])
    cli = CliRunner()
    bad = tmp_path / "review.csv"
    bad.write_text(f"image,action,label\n{other['image_id']},relabel,{new_label}\n{path},exlude,\n")
    refused = cli.invoke(app, ["review", str(bad), "--store", root])
    assert refused.exit_code == 2 and "line 3: action 'exlude'" in refused.output and not store.decision_rows()
    assert cli.invoke(app, ["relabel", other["image_id"][:12], "circel", "--store", root]).exit_code == 2
    assert cli.invoke(app, ["exclude", "0000000", "--store", root]).exit_code == 1
    assert cli.invoke(app, ["exclude", path, "--reason", "blurred", "--store", root]).exit_code == 0
    done = cli.invoke(app, ["relabel", other["image_id"][:12], new_label, "--store", root])
    assert done.exit_code == 0, done.output
    listed = json.loads(cli.invoke(app, ["decisions", "--store", root, "-f", "json"]).output)
    assert {(r["action"], r["label"], r["path"]) for r in listed} == {("exclude", None, path),
                                                                     ("relabel", new_label, listed[0]["path"])}

    # cache_data off: this run reads its share again every epoch (the other runs cache it after the first).
    overrides = {**_overrides(root), "train.recipe": "best", "train.epochs": 2, "train.promote_margin": 2.0,
                 "train.cache_data": False}
    result = train_flow("smoke", overrides)
    model = store.get_model(result["outputs"]["model_version"])
    pixels = store.get_version("pixels", model["dataset_version"])
    copies = holdout_copies(store, [s["path"] for s in pixels["shards"]], tuple(pixels["info"]["shape"]),
                            MineConfig().copy_distance)
    assert model["config"]["decisions"] == {"excluded": 1, "relabelled": 1, "leaks_moved": len(copies)}
    assert result["counts"]["excluded"] == 1 and result["counts"]["relabelled"] == 1
    # the holdout of the first model already left out the near-copies; this one also the excluded image
    assert model["metrics"]["n"] == trained["counts"]["holdout_images"] - (test_image["image_id"] not in copies)
    mined = mine_flow("smoke", _overrides(root), predictions_version=inferred["outputs"]["version"])
    assert mined["counts"]["reused"] == 0 and mined["counts"]["images"] == IMAGES - 1
    shard = pq.read_table(store.path(store.get_version("mining", mined["outputs"]["version"])["shards"][0]["path"]))
    assert dict(zip(shard["image_id"].to_pylist(), shard["label"].to_pylist()))[other["image_id"]] == new_label
    assert model["name"] == "airbench" and model["config"]["resolved_recipe"]["flip"] == "alternating"
    assert model["config"]["cache_data"] is False
    assert [h["epoch"] for h in model["metrics"]["history"]] == [0, 1]
    assert result["outputs"]["stage"] == "challenger"  # a margin of 2.0 cannot be beaten
    assert "kept as challenger" in result["outputs"]["promotion"]
    champion = store.champion()
    assert champion["version"] == trained["outputs"]["model_version"]
    # the champion was scored on the challenger's own holdout, and both results are stored
    vs = model["metrics"]["vs_champion"]
    assert vs["version"] == champion["version"] and vs["n"] == model["metrics"]["n"]
    assert vs["challenger_only"] + vs["champion_only"] <= vs["n"] and 0 < vs["p_value"] <= 1
    assert result["outputs"]["comparison"][0] == {"metric": "accuracy", "challenger": model["metrics"]["accuracy"],
                                                  "champion": vs["accuracy"]}
    assert model["config"]["initialised_from"] == "scratch"


def test_warm_start_from_the_champion(trained, stage_store):
    # A learning rate of almost zero: the model that comes out is the champion's weights it started from.
    overrides = {**_overrides(stage_store), "train.init": "champion", "train.retrain": "always", "train.epochs": 1,
                 "train.learning_rate": 1e-12}
    result = train_flow("smoke", overrides)
    store = Store(stage_store)
    model = store.get_model(result["outputs"]["model_version"])
    champion = store.get_model(trained["outputs"]["model_version"])
    assert model["config"]["initialised_from"] == f"champion v{champion['version']}"
    vs = model["metrics"]["vs_champion"]
    assert vs["version"] == champion["version"]
    assert vs["challenger_only"] + vs["champion_only"] <= 0.1 * vs["n"]  # right and wrong on the same images
    assert abs(model["metrics"]["accuracy"] - vs["accuracy"]) <= 0.05
    compared = CliRunner().invoke(app, ["models", "compare", str(champion["version"]), str(model["version"]),
                                        "--store", stage_store])
    assert compared.exit_code == 0, compared.output
    assert f"on the test split of pixels v{model['dataset_version']} ({vs['n']} images)" in compared.output
    assert "f1 circle" in compared.output and "McNemar" in compared.output


def _train_worker_pids() -> list[int]:
    """Ray Train workers of this test session's Ray (descendants of this process), not of other Ray instances
    on the machine."""
    import os

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"RayTrainWorker" in cmdline.read_bytes() and ours(int(cmdline.parent.name)):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return sorted(pids)


def _registered_checkpoints(run_dirs) -> int:
    """Checkpoints Ray Train's controller has registered (listed in its snapshot) in these run folders."""
    import json

    count = 0
    for run_dir in run_dirs:
        try:
            count += len(json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"])
        except (OSError, ValueError, KeyError):
            continue
    return count


def test_training_survives_a_killed_worker(tmp_path):
    """kill -9 a Ray Train worker once a checkpoint is registered: the run resumes from it, completes every
    epoch once, and learns well above chance."""
    import os
    import signal
    import threading
    import time

    generate_demo_images(tmp_path / "source", per_class=40, seed=1)  # 400 images: enough to learn from
    root = str(tmp_path / "store")
    ingest_flow(str(tmp_path / "source"), "smoke", _overrides(root))
    preprocess_flow("smoke", _overrides(root))
    epochs = 12  # enough to learn well above chance, and for the kill to land mid-run however quick the epochs
    # Two workers (one is killed), the batch and the rate scaled with them: 0.4 to 0.5 on the holdout by the end.
    overrides = {**_overrides(root), "train.epochs": epochs, "train.retrain": "always", "train.num_workers": 2}
    checkpoints = Path(root, "checkpoints")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(train_flow("smoke", overrides)))
    thread.start()
    killed, deadline = None, time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.2)
        if _registered_checkpoints(checkpoints.glob("train-*")) and _train_worker_pids():
            killed = _train_worker_pids()[-1]
            os.kill(killed, signal.SIGKILL)
    thread.join(timeout=600)
    assert killed, "no training worker to kill"
    assert outcome["counts"]["trained"] == 1
    store = Store(root)
    killed_run = store.get_model(outcome["outputs"]["model_version"])
    history = killed_run["metrics"]["history"]
    assert [h["epoch"] for h in history] == list(range(epochs))
    assert history[0]["resumed_at"] == 0 and history[-1]["resumed_at"] > 0  # resumed, not restarted

    # Chance is 0.1 on these 74 holdout images: a model that learnt nothing reaches 0.2 about 0.6% of the time.
    assert killed_run["metrics"]["accuracy"] >= 0.2


@pytest.mark.xdist_group("demo_nightly")  # one worker runs the shared nightly once
def test_nightly_end_to_end_then_rerun_adds_nothing(demo_nightly, demo_source, tmp_path):
    """The nightly flow end to end; then a copy of its store is moved elsewhere (that copy's original gone) and the
    rerun there reuses its model and results, and the commands that read a store work on it as they did."""
    made, first = demo_nightly
    copy_store(Store(str(made)), tmp_path / "store")
    assert first["ingest"]["counts"]["new_images"] == IMAGES
    assert first["train"]["counts"]["trained"] == 1
    store = Store(str(tmp_path / "store"))
    run = store.get_run(first["run_id"])
    assert run["status"] == "completed"
    assert [s["stage"] for s in run["stages"]] == ["ingest", "preprocess", "drift", "train", "infer", "cluster",
                                                   "mine", "report"]
    assert first["drift"]["outputs"]["note"].startswith("no champion yet")
    current = pads.dataset(store.path("datasets", "predictions", "current"), format="parquet").to_table()
    assert sorted(current.column("image_id").to_pylist()) == sorted({r["image_id"] for r in
                                                                     store.query("predictions", first["run_id"])})
    store.engine.dispose()

    moved = tmp_path / "restored" / "elsewhere"
    shutil.move(str(tmp_path / "store"), moved)
    second = nightly_flow(str(demo_source), "smoke", _overrides(str(moved)))
    assert second["ingest"]["counts"]["new_images"] == 0
    assert second["train"]["counts"]["trained"] == 0
    assert second["infer"]["counts"]["reused"] == second["mine"]["counts"]["reused"] == 1
    store = Store(str(moved))
    assert store.get_run(second["run_id"])["status"] == "completed"
    assert store.latest_version("images")["version"] == 1
    assert _task_messages(second["run_id"])["infer"] == f"reused predictions v{second['infer']['outputs']['version']}"
    assert store.champion()["path"] == f"{moved}/models/{first['run_id']}/model.keras"
    report = Path(second["report"]["outputs"]["report"]).read_text()
    assert f"<b>Nothing changed</b> since the previous nightly run ({first['run_id']})" in report
    runs_page = Path(second["report"]["outputs"]["runs_index"]).read_text()
    assert f'href="{second["run_id"]}/index.html"' in runs_page and f'href="{first["run_id"]}/index.html"' in runs_page
    for args in (["show", first["run_id"]], ["models"], ["predictions", "--run", first["run_id"]], ["fsck"]):
        out = CliRunner().invoke(app, [*args, "--store", str(moved)])
        assert out.exit_code == 0, (args, out.output)
        assert str(tmp_path / "store") not in out.output.replace(str(moved), "") and str(made) not in out.output
    assert "fsck: clean" in out.output and "0 orphan files" in out.output


def _task_messages(run_id: str) -> dict[str, str | None]:
    """The state message of each stage task of a run, as Prefect recorded it."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=run_id)))
    return {t.name.rsplit("-", 1)[0]: t.state.message for t in tasks}


def test_an_ingest_between_a_nightly_runs_stages_does_not_change_its_inputs(demo_source, tmp_path, monkeypatch):
    """While a nightly run is between preprocess and train, an ad hoc ingest flow is refused (the run holds the
    store's writer lease), and a writer outside the flows (Fusion's own functions, as another tool would call
    them) commits new images and pixels versions: the run still trains, infers and clusters the versions its
    own stages returned. The run preprocesses to grayscale (one nightly run serves both checks): its model
    takes one channel."""
    from fusion_core.config import load_settings
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.stages.preprocess import preprocess_dataset
    from fusion_core.store import StoreBusyError

    overrides = {**_overrides(str(tmp_path / "store")), "preprocess.grayscale": True}
    generate_demo_images(tmp_path / "more", per_class=3, seed=9)  # 30 other images
    real_train_flow = nightly.train_flow

    def ad_hoc_runs_then_train(*args, **kwargs):
        with pytest.raises(StoreBusyError, match="one run writes to a store at a time"):
            ingest_flow(str(tmp_path / "more"), "smoke", overrides)
        settings = load_settings("smoke", overrides)
        store = Store.from_settings(settings)
        other = store.start_run("other-tool", {})
        images = ingest_source(settings, store, str(tmp_path / "more"), other).outputs["version"]
        preprocess_dataset(settings, store, images, other)
        store.finish_run(other, "completed")
        return real_train_flow(*args, **kwargs)

    monkeypatch.setattr(nightly, "train_flow", ad_hoc_runs_then_train)
    result = nightly_flow(str(demo_source), "smoke", overrides)

    store = Store(str(tmp_path / "store"))
    assert store.latest_version("images")["num_rows"] == IMAGES + 30  # the ad hoc runs did commit
    assert store.latest_version("pixels")["version"] == 2
    assert result["preprocess"]["outputs"]["version"] == 1
    assert store.get_model(result["train"]["outputs"]["model_version"])["dataset_version"] == 1
    predictions = store.get_version("predictions", result["infer"]["outputs"]["version"])
    assert predictions["info"]["pixels_version"] == 1 and predictions["num_rows"] == IMAGES
    clusters = store.get_version("clusters", result["cluster"]["outputs"]["version"])
    assert clusters["info"]["predictions_version"] == predictions["version"] and clusters["num_rows"] == IMAGES

    from fusion_core.learning.model import load_model

    assert result["preprocess"]["outputs"]["shape"] == [32, 32, 1]
    assert load_model(result["train"]["outputs"]["model_path"]).input_shape == (None, 32, 32, 1)


def test_a_stopped_train_flow_resumes_from_its_last_checkpoint(trained, stage_store, tmp_path, prefect_api_env):
    """kill -9 the whole `fusion run train` process mid-run; the next run of the same training (here a train flow
    in this process) resumes from its last checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "store"
    copy_store(Store(stage_store), store)  # data and a first model, from the stage tests' store
    fusion = str(Path(sys.executable).with_name("fusion"))
    # Epochs of these 120 images take well under a second: 8 of them leave the kill time to land mid-training.
    args = [fusion, "run", "train", "-c", "smoke", "--store", str(store), "--set", "train.epochs=8",
            "--set", "train.seed=7"]
    env = prefect_api_env
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    earlier_runs = set(store.glob("checkpoints/train-*"))
    registered, deadline = 0, time.monotonic() + 300
    while registered < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # kill once Ray Train has registered checkpoints (a folder on disk is not enough)
        registered = _registered_checkpoints(set(store.glob("checkpoints/train-*")) - earlier_runs)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert registered >= 1, "training never checkpointed"

    rerun = train_flow("smoke", {**_overrides(str(store)), "train.epochs": 8, "train.seed": 7})
    model = Store(str(store)).get_model(rerun["outputs"]["model_version"])
    history = model["metrics"]["history"]
    assert [h["epoch"] for h in history] == list(range(8))
    assert history[-1]["resumed_at"] > 0  # the rerun started from the stopped run's checkpoint


def test_a_failed_nightly_run_gets_a_report_that_says_so(tmp_path):
    overrides = _overrides(str(tmp_path / "store"))
    with pytest.raises(Exception):
        nightly_flow(str(tmp_path / "no-such-source"), "smoke", overrides)
    store = Store(str(tmp_path / "store"))
    run = store.list_runs()[0]
    assert run["status"] == "failed"
    page = (tmp_path / "store" / "reports" / run["run_id"] / "index.html").read_text()
    assert "nightly flow, failed" in page
