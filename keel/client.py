"""Client helpers: connect to Temporal with Keel's converter, start agent tasks, memorize
documents."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import (
    Client,
    TLSConfig,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from keel import _search_attributes as search_attributes
from keel import durable
from keel._identity import caller_of
from keel._metrics import runtime_for
from keel._queues import Queues
from keel.contracts import (
    Memorized,
    MemorizeRequest,
    TaskProgress,
    TaskRequest,
    TaskResult,
    WatchRequest,
)
from keel.errors import KeelError
from keel.plugin import KeelPlugin
from keel.settings import Settings, get_settings


class TemporalUnreachable(KeelError, ConnectionError):
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
    runtime = runtime_for(settings.metrics_address)  # its own error: not an unreachable server
    try:
        return await Client.connect(
            target,
            namespace=settings.temporal_namespace,
            tls=_tls(settings),
            api_key=settings.temporal_api_key,
            plugins=[KeelPlugin(settings)],
            runtime=runtime,
        )
    except RuntimeError as err:
        raise TemporalUnreachable(
            f"cannot reach Temporal at {target} ({str(err).splitlines()[0]}); "
            "start one with `keel dev`, or set KEEL_TEMPORAL_ADDRESS to your cluster"
        ) from None


# Between two answers of the `watch` Update: events that come together arrive in one answer,
# and each answer costs the task's history two events.
WATCH_GATHER_S = 0.5
# A task that takes no more watchers (or no worker answers yet) is read by its `status` query.
WATCH_POLL_S = 1.0
WATCH_QUERY_TIMEOUT = timedelta(seconds=10)


class WatchRefused(KeelError):
    """The task refused a watcher: not its user or an operator, or a malformed call."""


async def watch_task(
    client: Client, workflow_id: str, after: int = 0
) -> AsyncIterator[TaskProgress]:
    """The task's progress each time it has new events, until it ends. `after`: events
    already seen. It catches up with the `status` query (free), then waits in a `watch`
    Update that the task answers when something happens: no query every second. A run that
    continues as new is followed into the next one; a task that takes no more watchers is
    read by its `status` query every second; a task already ended yields its last progress
    once (when a worker can still answer for it).

        async for progress in watch_task(client, handle.id):
            print(progress.status, progress.events[-1], progress.total_usd)
    """
    handle = client.get_workflow_handle(workflow_id)  # the latest run, whichever it is
    polling = False
    while True:
        try:
            progress = await handle.query(
                durable.QUERY_STATUS, result_type=TaskProgress, rpc_timeout=WATCH_QUERY_TIMEOUT
            )
        except RPCError:
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                return  # ended, and no worker answers for it: its result is still there
            await asyncio.sleep(WATCH_POLL_S)  # no worker answers yet
            continue
        if progress.events_total > after or progress.status.is_final:
            yield progress
            if progress.status.is_final:
                return
            after = progress.events_total
            await asyncio.sleep(WATCH_GATHER_S)
            continue
        if polling:
            await asyncio.sleep(WATCH_POLL_S)
            continue
        try:
            progress = await handle.execute_update(
                durable.UPDATE_WATCH, WatchRequest(after=after), result_type=TaskProgress
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            kind = cause.type if isinstance(cause, ApplicationError) else None
            if kind == durable.WATCH_FULL:
                polling = True
            elif kind != durable.WATCH_BEHIND:  # caught up above, on the next round
                message = cause.message if isinstance(cause, ApplicationError) else str(cause)
                raise WatchRefused(f"task {workflow_id} refused a watcher: {message}") from None
            continue
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            continue  # the long poll's deadline passed: ask again
        except RPCError as err:
            # NOT_FOUND: the run closed under the call (it continued as new, or ended: the
            # query above tells); anything else (the server's Updates per run spent): poll
            polling = polling or err.status != RPCStatusCode.NOT_FOUND
            continue
        yield progress
        if progress.status.is_final:
            return
        after = progress.events_total
        await asyncio.sleep(WATCH_GATHER_S)


def new_workflow_id() -> str:
    return f"{durable.TASK_ID_PREFIX}{uuid.uuid4().hex[:12]}"


def _for_caller(client: Client, request: TaskRequest) -> TaskRequest:
    """A request that names no user is for the signed-in caller (KEEL_CREDENTIAL)."""
    caller = caller_of(client)
    if caller is None or "user_id" in request.model_fields_set:
        return request
    return request.model_copy(update={"user_id": caller.user})


async def start_task(
    client: Client,
    request: TaskRequest,
    *,
    workflow_id: str | None = None,
    queues: Queues | None = None,
) -> WorkflowHandle[object, TaskResult]:
    queues = queues or Queues(get_settings().queue_prefix)
    request = _for_caller(client, request)
    return await client.start_workflow(
        durable.AGENT_TASK,
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
        durable.MEMORIZE_DOCUMENTS,
        request,
        id=f"{durable.MEMORIZE_ID_PREFIX}{uuid.uuid4().hex[:12]}",
        task_queue=queues.agent,
        result_type=Memorized,
        static_summary=f"memorize {sources[:120]} for user {request.user_id}",
    )


SERVING_TIMEOUT_S = 60.0


async def connect_when_serving(settings: Settings, timeout_s: float = SERVING_TIMEOUT_S) -> Client:
    """Connect to a server that has just been started: it refuses clients ("Frontend is not
    healthy yet") for a moment after its port opens; then wait until it serves."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client = await connect(settings)
            break
        except TemporalUnreachable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    await until_serving(client, max(1.0, deadline - time.monotonic()))
    return client


async def until_serving(client: Client, timeout_s: float = SERVING_TIMEOUT_S) -> None:
    """Return once the server answers requests in the client's namespace. A dev server opens
    its port before its frontend is healthy and its namespace registered; a task started in
    between fails ("Frontend is not healthy yet")."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            if await client.service_client.check_health():
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=client.namespace)
                )
                return
            last = "its health check says it is not serving yet"
        except RPCError as err:
            last = err.message
        if time.monotonic() > deadline:
            raise TemporalUnreachable(
                f"the Temporal server at {client.service_client.config.target_host} is not "
                f"ready after {timeout_s:.0f} s ({last}); see its log, or restart it"
            )
        await asyncio.sleep(0.2)
