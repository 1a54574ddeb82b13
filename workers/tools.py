"""Tool worker: tool activities on `keel-tools`, and the tool catalog."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities.tools.activity import ToolActivities
from keel.queues import TOOLS
from workers.components import Components


def build(client: Client, components: Components) -> Worker:
    tools = ToolActivities(components.registry, components.settings)
    return Worker(
        client,
        task_queue=components.queues.tools,
        activities=[tools.list_tools, *tools.for_queue(TOOLS)],
    )


if __name__ == "__main__":
    from workers.process import serve

    serve(build)
