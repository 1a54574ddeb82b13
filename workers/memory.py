"""Memory worker: recall and remember on `keel-memory` against Qdrant."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities.memory.activity import MemoryActivities
from workers.components import Components


def build(client: Client, components: Components) -> Worker:
    memory = MemoryActivities(components.episodes)
    return Worker(
        client,
        task_queue=components.queues.memory,
        activities=[memory.recall, memory.remember],
    )


if __name__ == "__main__":
    from workers.process import serve

    serve(build)
