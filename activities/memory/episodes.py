"""Long-term episode memory: one point per finished task, searched by the task's meaning."""

from __future__ import annotations

import time
import uuid

from activities.memory.vectors import VectorStore
from keel.contracts import Episode

KIND = "episodes"
_NAMESPACE = uuid.UUID("6f1c2b1e-7d0a-4c53-9a51-0b8f6f3d2a10")


def episode_id(user_id: str, workflow_id: str) -> str:
    """Deterministic: a retried `remember` overwrites the same point instead of adding one
    (and a reused workflow id of another user never does)."""
    return str(uuid.uuid5(_NAMESPACE, f"{user_id}\x1f{workflow_id}"))


class EpisodeStore:
    def __init__(self, vectors: VectorStore) -> None:
        self.vectors = vectors

    def remember(self, workflow_id: str, episode: Episode) -> str:
        point_id = episode_id(episode.user_id, workflow_id)
        payload = episode.model_dump(exclude={"id", "score"})
        payload |= {"workflow_id": workflow_id, "stored_at": time.time()}
        self.vectors.upsert(KIND, [(point_id, episode.task, payload)])
        return point_id

    def recall(self, user_id: str, vector: list[float], limit: int) -> list[Episode]:
        hits = self.vectors.search(KIND, user_id, vector, limit)
        return [
            Episode(
                id=str(h.id),
                score=h.score,
                **{k: v for k, v in (h.payload or {}).items() if k in Episode.model_fields},
            )
            for h in hits
        ]

    def count(self, user_id: str) -> int:
        return self.vectors.count(KIND, user_id)
