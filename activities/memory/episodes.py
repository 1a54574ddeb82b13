"""Long-term episode memory in Qdrant (embedded local mode), partitioned by user."""

from __future__ import annotations

import threading
import uuid
import warnings
from pathlib import Path

from qdrant_client import QdrantClient, models

from activities.memory.embedding import DIMENSIONS, embed
from keel.contracts import Episode

COLLECTION = "episodes"
_NAMESPACE = uuid.UUID("6f1c2b1e-7d0a-4c53-9a51-0b8f6f3d2a10")


def episode_id(workflow_id: str) -> str:
    """Deterministic: a retried `remember` overwrites the same point instead of adding one."""
    return str(uuid.uuid5(_NAMESPACE, workflow_id))


class EpisodeStore:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._client = QdrantClient(path=str(path))
        self._lock = threading.Lock()  # local mode is not safe for concurrent callers
        if not self._client.collection_exists(COLLECTION):
            self._client.create_collection(
                COLLECTION,
                vectors_config=models.VectorParams(
                    size=DIMENSIONS, distance=models.Distance.COSINE
                ),
            )
            with warnings.catch_warnings():  # local mode ignores indexes; a server uses it
                warnings.simplefilter("ignore", UserWarning)
                self._client.create_payload_index(
                    COLLECTION,
                    "user_id",
                    models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
                )
        size = self._client.get_collection(COLLECTION).config.params.vectors
        if isinstance(size, models.VectorParams) and size.size != DIMENSIONS:
            raise ValueError(
                f"Qdrant collection {COLLECTION!r} at {path} holds {size.size}-d vectors but "
                f"the embedder makes {DIMENSIONS}-d ones: use another KEEL_QDRANT_PATH"
            )

    def close(self) -> None:
        self._client.close()

    def remember(self, workflow_id: str, episode: Episode) -> str:
        point_id = episode_id(workflow_id)
        payload = episode.model_dump(exclude={"id", "score"})
        with self._lock:
            self._client.upsert(
                COLLECTION,
                [models.PointStruct(id=point_id, vector=embed(episode.task), payload=payload)],
            )
        return point_id

    def recall(self, user_id: str, query: str, limit: int) -> list[Episode]:
        only_user = models.Filter(
            must=[models.FieldCondition(key="user_id", match=models.MatchValue(value=user_id))]
        )
        with self._lock:
            hits = self._client.query_points(
                COLLECTION, query=embed(query), query_filter=only_user, limit=limit
            ).points
        return [Episode(id=str(h.id), score=h.score, **(h.payload or {})) for h in hits]
