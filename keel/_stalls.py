"""Work a task waits on that no worker is taking: the check behind "no silent waits".

A task whose next workflow task or activity sits scheduled on a task queue for seconds has
nobody serving that queue (no worker runs, or every worker there is busy). Temporal would
wait for one forever without saying so; `keel run`, `approve`, `answer` and `status` ask
this module and tell the user which queue and which command starts its worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import (
    PendingActivityState,
    PendingWorkflowTaskState,
    TaskQueueType,
    WorkflowExecutionStatus,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
)
from temporalio.client import Client

from keel._queues import AGENT, HTTP, LLM, MEMORY, PLANNER, SANDBOX, TOOLS

STALL_AFTER_S = 6.0  # scheduled this long and not started: nobody takes the queue's work
# The worker (`keel worker NAME`) that serves each queue, by the queue's base name.
WORKER_OF = {
    AGENT: "agent",
    PLANNER: "planner",
    LLM: "llm",
    TOOLS: "tools",
    SANDBOX: "tools",
    MEMORY: "memory",
}


@dataclass(frozen=True)
class Stall:
    queue: str
    what: str  # "the workflow task" or "activity plan"
    waited_s: float
    last_poll_s: float | None  # since a worker last polled the queue; None: none ever did

    @property
    def worker(self) -> str:
        """`keel worker <name>` for this queue: by its base name, prefix or not; the tool
        worker also serves the per-API queues `keel-http-<api>`."""
        if f"{HTTP}-" in self.queue:
            return "tools"
        return next((n for base, n in WORKER_OF.items() if self.queue.endswith(base)), "agent")

    def line(self) -> str:
        why = (
            "no worker has polled it"
            if self.last_poll_s is None
            else f"its last poll was {self.last_poll_s:.0f} s ago: its workers are gone or busy"
        )
        return (
            f"{self.what} has waited {self.waited_s:.0f} s on task queue {self.queue} ({why}); "
            f"start a worker with `keel worker {self.worker}` (or `keel dev`)"
        )


async def last_poll_s(client: Client, queue: str, kind: TaskQueueType.ValueType) -> float | None:
    """Seconds since a worker last polled `queue` for `kind` tasks; None when none has."""
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    if not described.pollers:
        return None
    latest = max(p.last_access_time.ToSeconds() for p in described.pollers)
    return max(0.0, time.time() - latest)


async def activity_backlog(client: Client, queue: str) -> int:
    """About how many activity tasks wait in `queue` for a worker (the server's estimate)."""
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            report_stats=True,
        )
    )
    return int(described.stats.approximate_backlog_count)


async def _describe(client: Client, workflow_id: str) -> DescribeWorkflowExecutionResponse:
    return await client.workflow_service.describe_workflow_execution(
        DescribeWorkflowExecutionRequest(
            namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id)
        )
    )


async def stalls(client: Client, workflow_id: str, after_s: float = STALL_AFTER_S) -> list[Stall]:
    """What the running workflow `workflow_id` has waited on for `after_s` or more with no
    worker taking it: its workflow task and its scheduled (not started) activities."""
    described = await _describe(client, workflow_id)
    info = described.workflow_execution_info
    if info.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        return []
    now = time.time()
    waiting: list[tuple[str, str, float, TaskQueueType.ValueType]] = []
    task = described.pending_workflow_task
    if (
        described.HasField("pending_workflow_task")
        and task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED
    ):
        queue = described.execution_config.task_queue.name or info.task_queue
        waited = now - task.scheduled_time.ToSeconds()
        waiting.append((queue, "the workflow task", waited, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    for pending in described.pending_activities:
        if pending.state != PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED:
            continue
        if pending.HasField("next_attempt_schedule_time"):
            continue  # backing off before a retry: not yet due
        queue = pending.activity_options.task_queue.name
        if not queue:
            continue
        waited = now - pending.scheduled_time.ToSeconds()
        what = f"activity {pending.activity_type.name}"
        waiting.append((queue, what, waited, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY))
    found = []
    for queue, what, waited, kind in waiting:
        if waited >= after_s:
            found.append(Stall(queue, what, waited, await last_poll_s(client, queue, kind)))
    return found


async def unanswered(client: Client, workflow_id: str, waited_s: float) -> Stall:
    """A query or an Update to `workflow_id` that nothing answered for `waited_s`: its
    workflow worker is missing (or busy); which queue that is, and when it was last polled."""
    described = await _describe(client, workflow_id)
    queue = (
        described.execution_config.task_queue.name or described.workflow_execution_info.task_queue
    )
    last = await last_poll_s(client, queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
    return Stall(queue, f"task {workflow_id}", waited_s, last)
