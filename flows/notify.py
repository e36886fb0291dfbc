"""A failed or crashed run tells someone: a JSON message POSTed to ``orchestration.webhook_url``."""

from __future__ import annotations

import json
import logging
import urllib.request
from urllib.parse import urlsplit

from flows.flow_run import fusion_run_ids, ui_url
from fusion_core.config import ConfigError, load_settings

log = logging.getLogger(__name__)
TIMEOUT_S = 10.0


def notify_failure(flow, flow_run, state) -> None:
    """Prefect ``on_failure`` / ``on_crashed`` hook: POST what failed to the webhook, when one is set.

    The settings come from the run's ``config`` and ``overrides`` parameters (and ``FUSION_*``). An
    unreachable webhook, or settings that do not load, are logged as a warning; the run's state stays.
    """
    parameters = flow_run.parameters or {}
    try:
        url = load_settings(parameters.get("config"), parameters.get("overrides")).orchestration.webhook_url
    except ConfigError as err:
        log.warning("no failure message sent for flow run %s: %s", flow_run.name, err)
        return
    if not url:
        return
    request = urllib.request.Request(url, data=json.dumps(failure_message(flow, flow_run, state)).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S):
            pass
    except OSError as err:  # refused, timed out, or an HTTP error status
        log.warning("could not send the failure of flow run %s to the webhook at %s: %s", flow_run.name,
                    urlsplit(url).netloc, err)  # the host only: a webhook's path often holds its secret


def failure_message(flow, flow_run, state) -> dict:
    """What the webhook receives."""
    return {"flow": flow.name, "flow_run_name": flow_run.name, "flow_run_id": str(flow_run.id),
            "fusion_run_id": fusion_run_ids.get(str(flow_run.id)), "state": state.name, "message": state.message,
            "url": ui_url(flow_run.id)}
