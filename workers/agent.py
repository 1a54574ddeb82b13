"""Orchestrator worker: runs the AgentTask and MemorizeDocuments workflows on `keel-agent`
(and the `notify_human` escalation activity)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities.notify import Notifier
from workers.components import Components
from workflows.agent_task import AgentTask
from workflows.memorize import MemorizeDocuments

# A workflow that raises one of these has a bug or met an input no check caught: the same
# workflow task would fail the same way on every retry, so the task fails instead, visibly,
# with the error. A non-determinism error is not among them: it still retries, so a fixed
# deployment can take the task over.
WORKFLOW_BUGS: tuple[type[Exception], ...] = (
    ArithmeticError,  # OverflowError: a duration too long for a timer
    AssertionError,
    AttributeError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,  # pydantic's ValidationError among them
)


def build(client: Client, components: Components) -> Worker:
    # The orchestrator's one activity, escalating a long wait for a person, is light I/O.
    return Worker(
        client,
        graceful_shutdown_timeout=components.drain,
        task_queue=components.queues.agent,
        workflows=[AgentTask, MemorizeDocuments],
        activities=[Notifier(components.settings).notify_human],
        workflow_failure_exception_types=list(WORKFLOW_BUGS),
    )
