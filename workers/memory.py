"""Memory worker: recall, remember and the cache on `keel-memory`, against Qdrant and the
graph store."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities.memory.activity import MemoryActivities
from activities.memory.cache import Cache
from activities.memory.documents import DocumentStore
from activities.memory.episodes import EpisodeStore
from workers.components import Components


def build(client: Client, components: Components) -> Worker:
    settings = components.settings
    memory = MemoryActivities(
        EpisodeStore(components.vectors),
        DocumentStore(components.vectors),
        components.graph,
        Cache(components.vectors, settings.cache_threshold, settings.cache_ttl_s),
        settings.recall_tokens,
        settings.memory_threads,
    )
    return Worker(
        client,
        graceful_shutdown_timeout=components.drain,
        task_queue=components.queues.memory,
        activities=[
            memory.recall,
            memory.remember,
            memory.remember_document,
            memory.cache_lookup,
            memory.cache_store,
        ],
    )
