"""Orchestrator worker: runs AgentTask workflows on `keel-agent`."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from workers.components import Components
from workflows.agent_task import AgentTask


def build(client: Client, components: Components) -> Worker:
    return Worker(client, task_queue=components.queues.agent, workflows=[AgentTask])


if __name__ == "__main__":
    from workers.process import serve

    serve(build)
