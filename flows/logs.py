"""Fusion's log lines in the Prefect API: Prefect's API log handler on Fusion's loggers.

The handler takes only records logged inside a flow or task run, so Fusion code that logs outside one
(tests, the CLI's own commands) neither warns nor tries to reach the API.
"""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

FUSION_LOGGERS = ("fusion_core", "flows", "tasks")


def _in_a_run(_record: logging.LogRecord) -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def send_logs_to_prefect() -> None:
    """Give Fusion's loggers an API log handler (once per process) and let their INFO lines through."""
    for name in FUSION_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
            handler = APILogHandler()
            handler.addFilter(_in_a_run)
            logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
