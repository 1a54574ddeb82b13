"""What the worker processes share: the expensive objects, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field

from activities.memory.episodes import EpisodeStore
from activities.models.router import ModelRouter
from activities.tools.builtin import default_registry
from activities.tools.registry import ToolRegistry
from keel.queues import Queues
from keel.settings import Settings


@dataclass
class Components:
    """Lazily built: a tools-only process never loads a model, a planner never opens Qdrant."""

    settings: Settings
    queues: Queues = field(default_factory=Queues)
    _router: ModelRouter | None = None
    _registry: ToolRegistry | None = None
    _episodes: EpisodeStore | None = None  # Qdrant local mode allows one client per folder

    @classmethod
    def from_settings(cls, settings: Settings) -> Components:
        return cls(settings=settings, queues=Queues(settings.queue_prefix))

    @property
    def router(self) -> ModelRouter:
        if self._router is None:
            self._router = ModelRouter.from_settings(self.settings)
        return self._router

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
