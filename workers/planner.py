"""Planner worker: `plan`, `react_step` and `extract_facts` on `keel-planner`, backed by the
small local model.

With KEEL_PLANNER_MODEL=triton the model is served by Triton Inference Server: the server at
KEEL_TRITON_URL, or, when that is unset, one this process starts (workers/triton/server.py)
and stops once the worker has finished its last plan.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.client import Client
from temporalio.plugin import SimplePlugin
from temporalio.worker import Worker

from activities.memory.extraction import ExtractionActivities
from activities.models.router import parse_spec
from activities.planning import PlanningActivities
from activities.react import ReactActivities
from workers.components import Components

# One local model per process decodes one request at a time; more would only queue inside.
MAX_CONCURRENT_PLANS = 2
# Triton spreads requests over its model instances (2 in workers/triton/model_repository)
# and queues the rest: a few more in flight than instances keeps every instance busy, while
# the backlog stays in the task queue, where autoscaling and the UI can see it.
MAX_CONCURRENT_TRITON_PLANS = 4


def _stops_triton(components: Components) -> SimplePlugin:
    """Stops the Triton server this process started when the worker stops: after the
    worker has drained, so that no plan loses its model mid-request."""

    @asynccontextmanager
    async def lifetime() -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(components.stop_triton)

    return SimplePlugin("keel.triton", run_context=lifetime)


def build(client: Client, components: Components) -> Worker:
    components.start_triton()  # if the model is `triton` and KEEL_TRITON_URL is unset
    # plan requests name their catalog by reference: this worker resolves it against the
    # tool registry of its own process (KEEL_MCP_SERVERS' tools included, see process.py)
    planning = PlanningActivities(
        components.router, components.settings.docs_dir, components.registry.specs
    )
    react = ReactActivities(components.router)  # the ReAct baseline's per-step calls
    extraction = ExtractionActivities(components.router)  # facts for memory, small model
    on_triton = parse_spec(components.settings.planner_model)[0] == "triton"
    return Worker(
        client,
        graceful_shutdown_timeout=components.drain,
        task_queue=components.queues.planner,
        activities=[planning.plan, react.react_step, extraction.extract_facts],
        max_concurrent_activities=MAX_CONCURRENT_TRITON_PLANS
        if on_triton
        else MAX_CONCURRENT_PLANS,
        plugins=[_stops_triton(components)] if components.triton is not None else [],
    )
