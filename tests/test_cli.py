"""The `fusion` command: argument errors without Ray, and the demo end to end in a real process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from fusion_core.store import Store

ROOT = Path(__file__).resolve().parent.parent
FUSION = str(Path(sys.executable).with_name("fusion"))


def test_bad_config_names_the_field(tmp_path):
    result = CliRunner().invoke(app, ["run", "train", "--store", str(tmp_path), "--set", "train.use_gpu=maybe"])
    assert result.exit_code == 2
    assert "train.use_gpu" in result.output


def test_workers_flag_sets_train_num_workers(tmp_path):
    result = CliRunner().invoke(app, ["run", "train", "--store", str(tmp_path), "--workers", "0", "--gpu"])
    assert result.exit_code == 2
    assert "train.num_workers" in result.output and "greater than or equal to 1" in result.output


@pytest.mark.parametrize(("sets", "epochs"), [([], 20), (["--set", "train.epochs=3"], 3), (["-c", "smoke"], 2)])
def test_the_demo_trains_its_own_epochs_where_the_settings_leave_them_to_the_recipe(tmp_path, monkeypatch,
                                                                                  sets, epochs):
    from flows.cli import running

    trained = []
    monkeypatch.setattr(running, "_run_flow", lambda flow, source, settings, *_: trained.append(
        settings.train.epochs) or {"run_id": "r"})  # the run itself: test_demo_then_runs_show_and_models
    monkeypatch.setattr(running, "_print_run", lambda *_: None)
    result = CliRunner().invoke(app, ["demo", "--store", str(tmp_path / "store"), *sets, "--set",
                                      f"demo.source={tmp_path / 'images'}", "--set", "demo.per_class=1"])
    assert result.exit_code == 0 and trained == [epochs], result.output


def test_unknown_flow_lists_the_flows():
    result = CliRunner().invoke(app, ["run", "bake"])
    assert result.exit_code == 2 and "nightly" in result.output


def test_nightly_needs_a_source_folder(tmp_path):
    result = CliRunner().invoke(app, ["run", "nightly", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "--source" in result.output
    result = CliRunner().invoke(app, ["run", "ingest", "--source", str(tmp_path / "nope"), "--store", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.ray
@pytest.mark.tf
@pytest.mark.prefect
def test_demo_then_runs_show_and_models(tmp_path, prefect_home):
    """The demo, as a user runs it; while it runs, `fusion show` shows it live, and a second nightly run and an
    ad hoc ingest on its store are refused with one line (one run writes at a time; results never interleave)."""
    store, source = str(tmp_path / "store"), str(tmp_path / "demo-data")
    env = {k: v for k, v in os.environ.items() if k != "FUSION_RAY__LOG_TO_DRIVER"}  # the defaults, as a user has
    env["PREFECT_HOME"] = str(prefect_home)
    demo = subprocess.Popen([FUSION, "demo", "--config", "smoke", "--store", store, "--set", f"demo.source={source}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dashboards, refusals = set(), []  # what `fusion show` says while the run lives; the other runs' answers
    while demo.poll() is None:
        time.sleep(3)
        if any(dashboards):
            continue  # seen: no more `fusion` processes competing with the demo for the CPUs
        live = subprocess.run([FUSION, "show", "latest", "--store", store, "--format", "json"], env=env,
                              capture_output=True, text=True)
        if live.returncode == 0 and json.loads(live.stdout)["status"] == "running":
            dashboards.add(json.loads(live.stdout)["params"].get("ray_dashboard"))
            other_run = [FUSION, "run", "--source", source, "-c", "smoke", "--store", store]
            refusals = refusals or [subprocess.run(other_run[:2] + [flow] + other_run[2:], env=env,
                                                   capture_output=True, text=True, timeout=300)
                                    for flow in ("nightly", "ingest")]
    stdout, stderr = demo.communicate()
    assert demo.returncode == 0, stderr[-3000:]
    assert any(d and d.startswith("http://127.0.0.1:") for d in dashboards), dashboards
    for refused in refusals:
        (line,) = [x for x in refused.stderr.splitlines() if x.strip()]
        assert refused.returncode == 2 and "(nightly) is running on the store" in line, refused.stderr
        assert "one run writes to a store at a time: try again when it ends" in line
    assert len(refusals) == 2
    catalog = Store(store)
    runs = [(r["flow"], r["status"]) for r in catalog.list_runs() if r["status"] != "refused"]
    assert runs == [("nightly", "completed")]
    assert [v["num_rows"] for v in catalog.list_versions("images")] == [120]
    assert "Ray dashboard: http://127.0.0.1:" in stderr
    assert "(nightly): completed" in stdout
    for stage in ("ingest", "preprocess", "train", "infer", "cluster", "report"):
        assert f"  {stage}" in stdout
    assert "new_images=120" in stdout and "holdout accuracy" in stdout
    # quiet: Fusion's lines and the summary; no Ray worker output, no TensorFlow start-up lines
    assert not any(noise in stderr for noise in ("RayTrainWorker", "TrainingReport", "oneDNN", "cuda", "Finished in"))
    assert len((stdout + stderr).splitlines()) <= 50, stdout + stderr
    assert "  report       " in stdout and "index.html" in stdout

    runs = CliRunner().invoke(app, ["runs", "--store", store])
    assert runs.exit_code == 0
    run_id = runs.output.splitlines()[1].split()[0]
    show = CliRunner().invoke(app, ["show", run_id, "--store", store])
    assert show.exit_code == 0
    assert "quarantine_reasons=" in show.output and "nmi=" in show.output and "model_version=1" in show.output
    models = CliRunner().invoke(app, ["models", "--store", store])
    assert models.exit_code == 0 and "champion" in models.output

    csv_out, parquet_out = tmp_path / "p.csv", tmp_path / "c.parquet"
    preds = CliRunner().invoke(app, ["predictions", "--run", run_id, "--store", store, "--out", str(csv_out)])
    assert preds.exit_code == 0 and "(120 rows, first 20 shown)" in preds.output
    assert len(csv_out.read_text().splitlines()) == 121
    some = CliRunner().invoke(app, ["predictions", "--run", run_id, "--store", store, "--predicted", "ring",
                                    "--min-confidence", "0.5"])
    assert some.exit_code == 0 and all(" ring " in line for line in some.output.splitlines()[1:-1])
    clusters = CliRunner().invoke(app, ["clusters", "--run", run_id, "--store", store, "--out", str(parquet_out)])
    assert clusters.exit_code == 0 and "exported 120 assignments" in clusters.output
    import pyarrow.parquet as pq

    assert pq.read_table(parquet_out).num_rows == 120

    # answers in the user's terms, on the demo's own files
    rows = json.loads(subprocess.run([FUSION, "predictions", "--run", "latest", "--store", store, "-f", "json"],
                                     capture_output=True, text=True).stdout)
    assert len(rows) == 120 and all(Path(r["path"]).is_file() and r["path"].startswith(source) for r in rows)
    imputed = json.loads(subprocess.run([FUSION, "images", "--imputed", "--store", store, "-f", "json"],
                                        capture_output=True, text=True).stdout)
    assert imputed and all(0 < r["missing"] < 1 for r in imputed)
    export = subprocess.run([FUSION, "export", str(tmp_path / "tree"), "--run", "latest", "--store", store],
                            capture_output=True, text=True)
    assert export.returncode == 0 and "exported 120 images" in export.stdout
    assert sum(1 for p in (tmp_path / "tree").rglob("*") if p.is_symlink()) == 120
    report = subprocess.run([FUSION, "run", "report", "--run", run_id, "--store", store], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"Run {run_id} (nightly): completed" in report.stdout and "index.html" in report.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.prefect
def test_serve_registers_the_nightly_cron_deployment(tmp_path, demo_source, prefect_home):
    import json
    import time
    import urllib.request

    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)
    serve = subprocess.Popen([FUSION, "serve", "--source", str(demo_source), "--store", str(tmp_path / "store"),
                              "--port", str(port)], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, found = time.monotonic() + 180, []
        while time.monotonic() < deadline and not found:
            time.sleep(2)
            assert serve.poll() is None, serve.stdout.read()
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/deployments/filter", data=b"{}",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    found = [d for d in json.load(resp) if d["name"] == "nightly"]
            except OSError:
                continue
        assert found, "the nightly deployment was never registered"
        crons = [s["schedule"]["cron"] for s in found[0]["schedules"]]
        assert crons == ["0 2 * * *"]
        assert found[0]["parameters"]["source"] == str(demo_source)
    finally:
        serve.terminate()
        serve.wait(timeout=60)


def test_models_promote_and_rollback(tmp_path):
    from fusion_core.store import Store

    store = Store(str(tmp_path / "store"))
    for accuracy in (0.5, 0.7, 0.6):
        v = store.register_model("r", "seed_cnn", "m.keras", "k", 1, {"accuracy": accuracy, "macro_f1": accuracy}, {})
    store.set_champion(1, reason="test")
    store.set_champion(2, reason="test")
    root = ["--store", str(tmp_path / "store")]
    refused = CliRunner().invoke(app, ["models", "promote", str(v)] + root)
    assert refused.exit_code == 2 and "not scored against champion v2" in refused.output
    assert "--reason" in CliRunner().invoke(app, ["models", "promote", str(v), "--force"] + root).output
    forced = CliRunner().invoke(app, ["models", "promote", str(v), "--force", "--reason", "hotfix for class x"] + root)
    assert forced.output.startswith("model v3 is now champion (was v2)")
    assert store.champion()["version"] == 3
    last = store.promotion_history()[-1]
    assert (last["version"], last["previous"], last["forced"], last["reason"]) == (3, 2, True, "hotfix for class x")
    history = json.loads(CliRunner().invoke(app, ["models", "history", "--format", "json"] + root).output)
    assert [(h["version"], h["was"], h["forced"]) for h in history] == [(1, "-", False), (2, "v1", False),
                                                                        (3, "v2", True)]
    rolled = CliRunner().invoke(app, ["models", "rollback"] + root)
    assert rolled.exit_code == 0 and store.champion()["version"] == 2
    assert CliRunner().invoke(app, ["models", "promote", "9"] + root).exit_code == 1
    assert CliRunner().invoke(app, ["models", "bake"] + root).exit_code == 2
