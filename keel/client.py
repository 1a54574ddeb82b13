"""Client helpers: connect to Temporal with Keel's converter, start agent tasks, memorize
documents."""

from __future__ import annotations

import uuid

from temporalio.client import Client, TLSConfig, WorkflowHandle

from keel import search_attributes
from keel.contracts import Memorized, MemorizeRequest, TaskRequest, TaskResult
from keel.converter import data_converter
from keel.queues import Queues
from keel.settings import Settings, get_settings

WORKFLOW_TYPE = "AgentTask"
MEMORIZE_WORKFLOW_TYPE = "MemorizeDocuments"


class TemporalUnreachable(ConnectionError):
    """No Temporal server answered at the configured address."""


def _tls(settings: Settings) -> TLSConfig | bool:
    if not (settings.temporal_tls_cert or settings.temporal_tls_ca):
        return settings.temporal_tls or bool(settings.temporal_api_key)
    return TLSConfig(
        server_root_ca_cert=settings.temporal_tls_ca.read_bytes()
        if settings.temporal_tls_ca
        else None,
        client_cert=settings.temporal_tls_cert.read_bytes() if settings.temporal_tls_cert else None,
        client_private_key=settings.temporal_tls_key.read_bytes()
        if settings.temporal_tls_key
        else None,
    )


async def connect(settings: Settings | None = None, address: str | None = None) -> Client:
    settings = settings or get_settings()
    target = address or settings.temporal_address
    try:
        return await Client.connect(
            target,
            namespace=settings.temporal_namespace,
            tls=_tls(settings),
            api_key=settings.temporal_api_key,
            data_converter=data_converter,
        )
    except RuntimeError as err:
        raise TemporalUnreachable(
            f"cannot reach Temporal at {target} ({str(err).splitlines()[0]}); "
            "start one with `keel dev`, or set KEEL_TEMPORAL_ADDRESS to your cluster"
        ) from None


def new_workflow_id() -> str:
    return f"keel-{uuid.uuid4().hex[:12]}"


async def start_task(
    client: Client,
    request: TaskRequest,
    *,
    workflow_id: str | None = None,
    queues: Queues | None = None,
) -> WorkflowHandle[object, TaskResult]:
    queues = queues or Queues(get_settings().queue_prefix)
    return await client.start_workflow(
        WORKFLOW_TYPE,
        request,
        id=workflow_id or new_workflow_id(),
        task_queue=queues.agent,
        result_type=TaskResult,
        search_attributes=search_attributes.initial(request.user_id),
        memo=search_attributes.memo(request),
        static_summary=(
            f"{request.task[:120]} (budget ${request.budget.usd:g}, user {request.user_id})"
        ),
    )


async def memorize(
    client: Client, request: MemorizeRequest, *, queues: Queues | None = None
) -> WorkflowHandle[object, Memorized]:
    """Put documents into a user's long-term memory (the MemorizeDocuments workflow)."""
    queues = queues or Queues(get_settings().queue_prefix)
    sources = ", ".join(d.source for d in request.documents)
    return await client.start_workflow(
        MEMORIZE_WORKFLOW_TYPE,
        request,
        id=f"keel-memorize-{uuid.uuid4().hex[:12]}",
        task_queue=queues.agent,
        result_type=Memorized,
        static_summary=f"memorize {sources[:120]} for user {request.user_id}",
    )
