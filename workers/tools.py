"""Tool worker: tool activities on `keel-tools`, the tool catalog, sandboxed runs on
`keel-sandbox`, and one rate-limited worker per allowlisted HTTP API (`keel-http-<api>`,
see activities/tools/http.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.tools.activity import ToolActivities
from activities.tools.http import HTTP_QUEUE, api_queues
from keel._queues import SANDBOX, TOOLS
from workers.components import Components

# Tools heartbeat every second; the SDK would otherwise hold heartbeats back for up to 0.8 of
# the heartbeat timeout, and a cancelled task would wait that long for its tools to stop.
HEARTBEAT_THROTTLE = timedelta(seconds=1)


def build(client: Client, components: Components) -> list[Worker]:
    tools = ToolActivities(components.registry, components.settings)
    catalog = Worker(
        client,
        graceful_shutdown_timeout=components.drain,
        task_queue=components.queues.tools,
        # and the sandboxed tools, for runs whose catalog put them on this queue (before
        # they had their own)
        activities=[
            tools.list_tools,
            tools.release_workspace,
            *tools.for_queue(TOOLS),
            *tools.for_queue(SANDBOX),
        ],
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )
    # No more sandboxed runs than sandbox threads: the rest wait in the task queue, where the
    # server shares them out between users and autoscaling sees them, instead of starting on
    # a worker to wait for a thread with their timeout running.
    sandbox = Worker(
        client,
        graceful_shutdown_timeout=components.drain,
        task_queue=components.queues.name(SANDBOX),
        activities=tools.for_queue(SANDBOX),
        max_concurrent_activities=components.settings.sandbox_threads,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )
    return [catalog, sandbox, *build_http(client, components, tools)]


def build_http(client: Client, components: Components, tools: ToolActivities) -> list[Worker]:
    """A worker per API of `http_get`, polling only that API's queue. Its rate option is
    sent to the server with every poll, and the server holds the whole queue (every
    worker of every tools process) to it: the rate limit is the API's, not per replica."""
    workers = []
    for tool in components.registry.on_queue(HTTP_QUEUE):
        for queue, rate in api_queues(tool).items():
            workers.append(
                Worker(
                    client,
                    graceful_shutdown_timeout=components.drain,
                    task_queue=components.queues.name(queue),
                    activities=tools.for_queue(HTTP_QUEUE),
                    max_task_queue_activities_per_second=rate,
                    max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
                )
            )
    return workers
