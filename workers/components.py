"""What the worker processes share: the expensive objects, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from activities.memory.episodes import EpisodeStore
from activities.models.router import ModelRouter
from activities.tools.builtin import default_registry
from activities.tools.registry import ToolRegistry
from keel.queues import Queues
from keel.settings import Settings

if TYPE_CHECKING:
    from workers.triton.server import TritonServer


@dataclass
class Components:
    """Lazily built: a tools-only process never loads a model, a planner never opens Qdrant."""

    settings: Settings
    queues: Queues = field(default_factory=Queues)
    _router: ModelRouter | None = None
    _registry: ToolRegistry | None = None
    _episodes: EpisodeStore | None = None  # Qdrant local mode allows one client per folder
    # The Triton server this process started because a model spec is `triton` and
    # KEEL_TRITON_URL is unset; the planner worker stops it when it stops (workers/planner.py),
    # and the server stops itself at process exit otherwise.
    triton: TritonServer | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Components:
        return cls(settings=settings, queues=Queues(settings.queue_prefix))

    @property
    def router(self) -> ModelRouter:
        if self._router is None:
            if self.settings.triton_url is None and _uses_triton(self.settings):
                self._start_triton()
            self._router = ModelRouter.from_settings(self.settings)
        return self._router

    def _start_triton(self) -> None:
        from workers.triton.server import TritonServer

        self.triton = TritonServer(
            self.settings.home, model_path=self.settings.llamacpp_model_path
        ).start()
        self.settings = self.settings.model_copy(update={"triton_url": self.triton.url})

    def stop_triton(self) -> None:
        if self.triton is not None:
            self.triton.stop()
            self.triton = None

    @property
    def registry(self) -> ToolRegistry:
        if self._registry is None:
            self._registry = default_registry(self.settings)
        return self._registry

    @property
    def episodes(self) -> EpisodeStore:
        if self._episodes is None:
            self._episodes = EpisodeStore(self.settings.qdrant_dir)
        return self._episodes


def _uses_triton(settings: Settings) -> bool:
    specs = (settings.planner_model, settings.reasoner_model, settings.escalation_model or "")
    return any(spec.partition(":")[0] == "triton" for spec in specs)
