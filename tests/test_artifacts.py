"""What the flows publish to Prefect (artifacts) and tell a webhook when a nightly run fails."""

import http.server
import json
import logging
import socket
import threading
import uuid

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Failed

from flows.artifacts import ProgressArtifacts, artifact_key, report_link, stage_markdown
from flows.nightly import nightly_flow
from flows.notify import notify_failure
import flows.artifacts as artifacts

INGEST = {"stage": "ingest", "counts": {"files": 4, "new_images": 3, "already_stored": 0, "quarantined": 1,
                                        "quarantine_reasons": {"truncated": 1}},
          "metrics": {"seconds": 1.5}, "outputs": {"version": 2}}


def test_artifact_keys_are_lowercase_letters_digits_and_dashes():
    assert artifact_key("drift train", "progress") == "fusion-drift-train-progress"
    assert artifact_key("Nightly_Run") == "fusion-nightly-run"


def test_a_stage_summary_has_its_headline_message_and_figures():
    text = stage_markdown("ingest", INGEST, "reused images v2")
    assert text.startswith("### ingest: completed, reused images v2")
    assert "* ingested 3 new images (0 already stored), quarantined 1 files" in text
    assert "counts:  files=4, new_images=3" in text and "outputs: version=2" in text


def test_a_report_link_is_a_file_url_for_a_local_path(tmp_path):
    assert report_link(str(tmp_path / "r" / "index.html")) == (tmp_path / "r" / "index.html").as_uri()
    assert report_link("s3://bucket/reports/1/index.html") == "s3://bucket/reports/1/index.html"


def test_progress_artifacts_are_created_once_and_updated_sparingly(monkeypatch):
    calls = []
    monkeypatch.setattr(artifacts, "create_progress_artifact",
                        lambda percent, key, description: calls.append(("create", key, percent)) or "id-1")
    monkeypatch.setattr(artifacts, "update_progress_artifact",
                        lambda artifact, percent, description: calls.append(("update", artifact, percent)))
    listener = ProgressArtifacts(every_s=3600)
    listener("ingest", 100, None)  # total not known yet: nothing to show
    for done in (1, 2, 3, 4):
        listener("preprocess", done, 4)
    listener("preprocess", 4, 4)  # the close repeats the last figures
    assert calls == [("create", "fusion-preprocess-progress", 25.0), ("update", "id-1", 100.0)]


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args):
        pass


def _failed_run(overrides: dict) -> FlowRun:
    return FlowRun(name="20261130-020000-abcdef", flow_id=uuid.uuid4(),
                   parameters={"source": "/nope", "config": "smoke", "overrides": overrides})


def test_a_failed_nightly_posts_to_the_webhook():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    server.bodies = []
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/hooks/secret-token"
    run = _failed_run({"orchestration.webhook_url": url})
    notify_failure(nightly_flow, run, Failed(message="Flow run encountered an exception: FileNotFoundError: gone"))
    thread.join(timeout=10)
    server.server_close()
    (body,) = server.bodies
    assert body["flow"] == "nightly" and body["flow_run_id"] == str(run.id) and body["state"] == "Failed"
    assert body["flow_run_name"] == run.name and "FileNotFoundError: gone" in body["message"]


def test_an_unreachable_webhook_is_a_warning(caplog):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = _failed_run({"orchestration.webhook_url": f"http://127.0.0.1:{port}/hooks/secret-token"})
    with caplog.at_level(logging.WARNING, logger="flows.notify"):
        notify_failure(nightly_flow, run, Failed(message="boom"))
    (record,) = caplog.records
    assert "could not send the failure of flow run 20261130-020000-abcdef" in record.getMessage()
    assert "secret-token" not in record.getMessage()


@pytest.mark.parametrize("overrides", [{}, {"orchestration.webhook_url": ""}])
def test_no_webhook_no_message(overrides, caplog):
    with caplog.at_level(logging.WARNING, logger="flows.notify"):
        notify_failure(nightly_flow, _failed_run(overrides), Failed(message="boom"))
    assert not caplog.records


def test_fusion_log_lines_outside_a_run_stay_local(recwarn):
    from flows.logs import send_logs_to_prefect

    send_logs_to_prefect()
    logging.getLogger("fusion_core.stages.ingest").warning("logged outside any flow run")
    assert not [w for w in recwarn if "send logs to the API" in str(w.message)]


@pytest.mark.prefect
def test_stage_artifacts_are_readable_through_the_api(prefect_harness, tmp_path):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.artifacts import publish_stage

    comparison = [{"metric": "accuracy", "challenger": 0.81, "champion": 0.79}]
    checks = [{"check": "label_mix", "value": 0.2, "threshold": 0.15, "flagged": True}]

    @flow
    def stages():
        publish_stage("train", {"counts": {"trained": 1}, "metrics": {"accuracy": 0.81, "macro_f1": 0.8},
                                "outputs": {"model_version": 2, "stage": "challenger", "comparison": comparison}})
        publish_stage("drift", {"counts": {}, "metrics": {}, "outputs": {"checks": checks, "flagged": ["label_mix"]}})
        publish_stage("infer", {"counts": {"reused": 1}, "metrics": {}, "outputs": {"version": 4}},
                      "reused predictions v4")
        publish_stage("report", {"counts": {}, "metrics": {}, "outputs": {"report": str(tmp_path / "index.html")}})

    state = stages(return_state=True)
    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))}
    assert json.loads(found["fusion-train-comparison"].data) == comparison
    assert json.loads(found["fusion-drift-checks"].data) == checks
    assert "holdout accuracy 0.810 (macro F1 0.800), model v2 is challenger" in found["fusion-train-summary"].data
    assert "reused predictions v4" in found["fusion-infer-summary"].data
    assert (tmp_path / "index.html").as_uri() in found["fusion-report"].data
    assert "fusion-infer-comparison" not in found  # only row lists a stage returns become tables
