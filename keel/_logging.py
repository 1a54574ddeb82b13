"""structlog JSON logs, bound with workflow id, run id, activity and task queue."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from keel._core.redaction import scrub


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines (on stderr unless given a stream) for structlog and stdlib loggers alike:
    the Temporal SDK and `workflow.logger` log through stdlib."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _flatten_temporal_context,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _without_secrets,
                structlog.processors.JSONRenderer(default=str),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request's URL at INFO: a webhook's or an API's secret path with it
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def _without_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Every value of the line, exception text included, scrubbed of this process's
    secrets (keel/_core/redaction.py)."""
    exc_info = event.get("exc_info")
    if isinstance(exc_info, tuple):  # rendered here, so that its text is scrubbed too
        event["exc_info"] = [str(part) for part in exc_info]
    return {scrub(k): scrub(v) for k, v in event.items()}


def _flatten_temporal_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    # The SDK's loggers attach `temporal_workflow` / `temporal_activity` dicts; lift the keys
    # an operator filters by to the top level.
    for key in ("temporal_workflow", "temporal_activity"):
        info = event.pop(key, None)
        if isinstance(info, dict):
            for name in ("workflow_id", "run_id", "task_queue", "activity_type", "workflow_type"):
                if name in info:
                    event.setdefault(name, info[name])
    return event


def activity_logger() -> Any:
    """A logger bound with the current activity's identity."""
    from temporalio import activity

    info = activity.info()
    return structlog.get_logger("keel.activity").bind(
        workflow_id=info.workflow_id,
        run_id=info.workflow_run_id,
        activity=info.activity_type,
        task_queue=info.task_queue,
        attempt=info.attempt,
    )
