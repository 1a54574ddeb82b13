"""Reasoner worker: large-model calls on `keel-llm` (synthesis and the ask_reasoner tool)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities.reasoning import ReasoningActivities
from activities.tools.activity import ToolActivities
from keel._queues import LLM
from workers.components import Components

MAX_CONCURRENT_CALLS = 32  # I/O bound against remote APIs


def build(client: Client, components: Components) -> Worker:
    reasoning = ReasoningActivities(components.router)
    tools = ToolActivities(components.registry, components.settings, components.router)
    return Worker(
        client,
        graceful_shutdown_timeout=components.drain,
        task_queue=components.queues.llm,
        activities=[reasoning.synthesize, *tools.for_queue(LLM)],
        max_concurrent_activities=MAX_CONCURRENT_CALLS,
    )
