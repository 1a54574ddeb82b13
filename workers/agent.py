"""Orchestrator worker: runs the AgentTask and MemorizeDocuments workflows on `keel-agent`."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from workers.components import Components
from workflows.agent_task import AgentTask
from workflows.memorize import MemorizeDocuments


def build(client: Client, components: Components) -> Worker:
    return Worker(
        client, task_queue=components.queues.agent, workflows=[AgentTask, MemorizeDocuments]
    )


if __name__ == "__main__":
    from workers.process import serve

    serve(build)
