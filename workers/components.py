"""What the worker processes share: the expensive objects, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from activities.memory.embedding import RecentEmbeddings, build_embedder
from activities.memory.graph import GraphStore
from activities.memory.graph_neo4j import Neo4jGraphStore
from activities.memory.graph_sqlite import SqliteGraphStore
from activities.memory.vectors import VectorStore
from activities.models.router import ModelRouter
from activities.tools.builtin import default_registry
from activities.tools.registry import ToolRegistry
from keel._core.redaction import process_redactor
from keel._queues import Queues
from keel.settings import Settings, secret_values

if TYPE_CHECKING:
    from workers.triton.server import TritonServer


@dataclass
class Components:
    """Lazily built: a tools-only process never loads a model, a planner never opens Qdrant."""

    settings: Settings
    queues: Queues = field(default_factory=Queues)
    _router: ModelRouter | None = None
    _registry: ToolRegistry | None = None
    _vectors: VectorStore | None = None  # Qdrant local mode allows one client per folder
    _graph: GraphStore | None = None
    mcp_tools: list[str] | None = None  # names of the external MCP tools, once loaded
    # The Triton server this process started for a planner on `triton` without
    # KEEL_TRITON_URL (see start_triton); stopped with the planner worker.
    triton: TritonServer | None = None

    def __post_init__(self) -> None:
        # whatever this process logs or reports is scrubbed of these settings' secrets
        process_redactor().add(secret_values(self.settings))

    @classmethod
    def from_settings(cls, settings: Settings) -> Components:
        return cls(settings=settings, queues=Queues(settings.queue_prefix))

    @property
    def drain(self) -> timedelta:
        """How long a worker asked to stop lets running activities finish (KEEL_WORKER_DRAIN_S)
        before cancelling them; Temporal retries a cancelled one on another worker."""
        return timedelta(seconds=self.settings.worker_drain_s)

    @property
    def router(self) -> ModelRouter:
        if self._router is None:
            self._router = ModelRouter.from_settings(self.settings)
        return self._router

    def start_triton(self) -> None:
        """For the planner worker: when its models are `triton` and KEEL_TRITON_URL is unset,
        start a Triton server and point the `triton` models at it. Only the process that
        plans starts one (a `keel worker llm` beside it needs none), in whatever order the
        workers of this process are built."""
        from activities.models.triton import TritonModel
        from workers.triton.server import TritonServer

        if self.triton is not None or self.settings.triton_url is not None:
            return
        if not _plans_on_triton(self.settings):
            return
        self.triton = TritonServer(
            self.settings.home, model_path=self.settings.llamacpp_model_path
        ).start()
        self.settings = self.settings.model_copy(update={"triton_url": self.triton.url})
        if self._router is not None:  # built already by another worker of this process
            for role in ("planner", "escalation", "reasoner", "memory"):
                model = self._router.model_for(role)
                if isinstance(model, TritonModel) and model.url is None:
                    model.attach(self.triton.url)

    def stop_triton(self) -> None:
        if self.triton is not None:
            self.triton.stop()
            self.triton = None

    @property
    def registry(self) -> ToolRegistry:
        if self._registry is None:
            self._registry = default_registry(self.settings)
        return self._registry

    async def load_mcp_tools(self) -> list[str]:
        """Add the tools of the external MCP servers in KEEL_MCP_SERVERS to the registry,
        once per process, and return their names. The process that runs the tool worker
        calls this before building it: the servers are asked for their tools at start, so a
        changed server needs a restart of the tool worker."""
        if self.mcp_tools is not None:
            return self.mcp_tools
        names: list[str] = []
        if self.settings.mcp_servers is not None:
            from activities.tools.mcp_remote import discover_tools, load_servers

            for tool in await discover_tools(load_servers(self.settings.mcp_servers)):
                self.registry.add(tool)
                names.append(tool.spec.name)
        self.mcp_tools = names
        return names

    @property
    def vectors(self) -> VectorStore:
        if self._vectors is None:
            s = self.settings
            embedder = RecentEmbeddings(build_embedder(s.embedding_model, s))
            self._vectors = VectorStore.open(embedder, s.qdrant_dir, s.qdrant_url, s.qdrant_api_key)
        return self._vectors

    @property
    def graph(self) -> GraphStore:
        if self._graph is None:
            s = self.settings
            self._graph = (
                Neo4jGraphStore(s.neo4j_url, s.neo4j_user, s.neo4j_password, s.neo4j_database)
                if s.neo4j_url
                else SqliteGraphStore(s.graph_path)
            )
        return self._graph

    def close_memory(self) -> None:
        if self._vectors is not None:
            self._vectors.close()
            self._vectors = None
        if self._graph is not None:
            self._graph.close()
            self._graph = None


def _plans_on_triton(settings: Settings) -> bool:
    """Whether the planner worker's activities call a `triton` model (the planner,
    escalation or memory role)."""
    specs = (
        settings.planner_model,
        settings.escalation_model or settings.reasoner_model,
        settings.memory_model or settings.planner_model,
    )
    return any(spec.partition(":")[0] == "triton" for spec in specs)
