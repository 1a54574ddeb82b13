"""Planner worker: the `plan` activity on `keel-planner`, backed by the small local model."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities.planning import PlanningActivities
from activities.react import ReactActivities
from workers.components import Components

# One local model per process decodes one request at a time; more would only queue inside.
MAX_CONCURRENT_PLANS = 2


def build(client: Client, components: Components) -> Worker:
    planning = PlanningActivities(components.router, components.settings.docs_dir)
    react = ReactActivities(components.router)  # the ReAct baseline's per-step calls
    return Worker(
        client,
        task_queue=components.queues.planner,
        activities=[planning.plan, react.react_step],
        max_concurrent_activities=MAX_CONCURRENT_PLANS,
    )


if __name__ == "__main__":
    from workers.process import serve

    serve(build)
