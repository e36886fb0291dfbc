"""The Prefect flow run a Fusion run belongs to: its id and UI link, and its name (the Fusion run id)."""

from __future__ import annotations

from prefect import get_client
from prefect.context import FlowRunContext
from prefect.utilities.urls import url_for

from flows.prefect_server import temporary

# Prefect flow run id -> the Fusion run it works for, for the failure hooks (they run in this process).
fusion_run_ids: dict[str, str] = {}


def ui_url(flow_run_id) -> str | None:
    """The flow run's page in the Prefect UI (PREFECT_UI_URL, else derived from PREFECT_API_URL), or None
    when neither is set or the server is the temporary one this process started (gone when it ends)."""
    if temporary["url"] is not None:
        return None
    return url_for("flow-run", obj_id=str(flow_run_id))


def current_link() -> dict | None:
    """``{"flow_run_id", "url"}`` of the flow run this code runs in; None outside a flow run."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return {"flow_run_id": str(context.flow_run.id), "url": ui_url(context.flow_run.id)}


def name_flow_run(name: str, fusion_run_id: str) -> None:
    """Rename the current flow run (in the API and in this process) and remember its Fusion run."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_name(context.flow_run.id, name)
    context.flow_run.name = name
    fusion_run_ids[str(context.flow_run.id)] = fusion_run_id
