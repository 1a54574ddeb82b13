"""Orchestrator worker: runs the AgentTask and MemorizeDocuments workflows on `keel-agent`
(and the `notify_human` escalation activity)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities.notify import Notifier
from workers.components import Components
from workflows.agent_task import AgentTask
from workflows.memorize import MemorizeDocuments


def build(client: Client, components: Components) -> Worker:
    # The orchestrator's one activity, escalating a long wait for a person, is light I/O.
    return Worker(
        client,
        task_queue=components.queues.agent,
        workflows=[AgentTask, MemorizeDocuments],
        activities=[Notifier(components.settings).notify_human],
    )
