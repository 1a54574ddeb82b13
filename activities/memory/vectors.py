"""Qdrant for long-term memory: one collection per memory kind, partitioned by user.

One code path for both deployments, through `qdrant-client`:
- a Qdrant server (KEEL_QDRANT_URL): one collection per kind; its `user_id` keyword index is
  marked `is_tenant`, so the server lays each user's points out together and a filtered
  search touches only that user's segment;
- embedded local mode (default, `$KEEL_HOME/qdrant`): local mode ignores payload indexes and
  checks the filter against every point of a collection in Python (about 1 s per search at
  100K points), so each kind is split into up to `LOCAL_SHARDS` collections by a hash of the
  user id, which does the tenant index's job: a search scans one shard, which holds about
  one user's points while users are fewer than shards (bench/memory.py). Shards are created
  on first write; each is one open SQLite file in local mode.
Every search is filtered by user either way: partitioning is for speed, the filter is what
keeps users apart. Each collection records the embedding model and its vector size in its
metadata; opening it with another model is an error, never a silent mix of vector spaces.
"""

from __future__ import annotations

import resource
import threading
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from activities.memory.embedding import Embedder
from keel.contracts import SHARED_SCOPE
from keel.errors import KeelError

KINDS = ("episodes", "documents", "cache")
LOCAL_SHARDS = 4096
SHARED = SHARED_SCOPE  # the user id of entries every user may read (e.g. a shared cache)


class VectorStoreError(KeelError, ValueError):
    """The store cannot be used as configured; the message says what to do."""


def _allow_open_files() -> None:
    """Local mode keeps every collection's SQLite file open: up to LOCAL_SHARDS per kind,
    more than a default soft limit of 1024 descriptors allows. Raise it to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))


def _only(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


class VectorStore:
    def __init__(self, client: QdrantClient, embedder: Embedder, shards: int, where: str) -> None:
        self.client, self.embedder, self.shards, self.where = client, embedder, shards, where
        self._ready: set[str] = set()
        # Local mode is not safe for concurrent callers; a server client is, but one lock
        # keeps the two paths the same and the memory worker's calls are short.
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls, embedder: Embedder, path: Path, url: str | None = None, api_key: str | None = None
    ) -> VectorStore:
        if url:
            client = QdrantClient(url=url, api_key=api_key)
            try:
                client.get_collections()
            except Exception as err:  # the client raises transport-specific types
                raise VectorStoreError(
                    f"cannot reach Qdrant at {url}: {err}; check KEEL_QDRANT_URL and "
                    "KEEL_QDRANT_API_KEY, or unset KEEL_QDRANT_URL for embedded local mode"
                ) from err
            return cls(client, embedder, shards=1, where=url)
        path.mkdir(parents=True, exist_ok=True)
        _allow_open_files()
        try:
            client = QdrantClient(path=str(path))
        except RuntimeError as err:  # another process holds the folder's lock
            raise VectorStoreError(
                f"Qdrant folder {path} is in use by another process: {err}; run one memory "
                "worker per KEEL_QDRANT_PATH, or point KEEL_QDRANT_URL at a Qdrant server"
            ) from err
        return cls(client, embedder, shards=LOCAL_SHARDS, where=str(path))

    def close(self) -> None:
        self.client.close()

    # --- collections ---------------------------------------------------------------------

    def collection(self, kind: str, user_id: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown memory kind {kind!r}: expected one of {KINDS}")
        if self.shards == 1:
            return kind
        return f"{kind}_{zlib.crc32(user_id.encode()) % self.shards:04d}"

    def _ensure(self, name: str) -> None:
        """Before a write: the collection exists, made for this embedder."""
        if not self._readable(name):
            self.client.create_collection(
                name,
                vectors_config=models.VectorParams(
                    size=self.embedder.dimensions, distance=models.Distance.COSINE
                ),
                metadata={"embedder": self.embedder.name, "dimensions": self.embedder.dimensions},
            )
            with warnings.catch_warnings():  # local mode ignores indexes and says so
                warnings.simplefilter("ignore", UserWarning)
                self.client.create_payload_index(
                    name,
                    "user_id",
                    models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
                )
            self._ready.add(name)

    def _readable(self, name: str) -> bool:
        """Before a read: whether the collection exists (a missing one is empty and is not
        created by reading); an existing one must hold this embedder's vectors."""
        if name in self._ready:
            return True
        if not self.client.collection_exists(name):
            return False
        config = self.client.get_collection(name).config
        vectors = config.params.vectors
        size = vectors.size if isinstance(vectors, models.VectorParams) else None
        recorded = (config.metadata or {}).get("embedder")
        if size != self.embedder.dimensions or recorded not in (None, self.embedder.name):
            raise VectorStoreError(
                f"Qdrant collection {name!r} at {self.where} holds {size}-d vectors of "
                f"{recorded or 'an unrecorded model'}, but the embedder is {self.embedder.name} "
                f"({self.embedder.dimensions}-d): set KEEL_EMBEDDING_MODEL back, or use another "
                "KEEL_QDRANT_PATH / Qdrant server for the new model"
            )
        self._ready.add(name)
        return True

    # --- points --------------------------------------------------------------------------

    def upsert(
        self,
        kind: str,
        points: Sequence[tuple[str, str, dict[str, Any]]],
        vectors: Sequence[list[float]] | None = None,
    ) -> None:
        """Write (id, text, payload) points; the text is embedded unless vectors are given.
        Every payload carries its `user_id`. Ids are deterministic, so a retry overwrites."""
        if not points:
            return
        vectors = (
            list(vectors)
            if vectors is not None
            else self.embedder.embed([text for _, text, _ in points])
        )
        by_collection: dict[str, list[models.PointStruct]] = {}
        for (point_id, _, payload), vector in zip(points, vectors, strict=True):
            name = self.collection(kind, payload["user_id"])
            by_collection.setdefault(name, []).append(
                models.PointStruct(id=point_id, vector=vector, payload=payload)
            )
        with self._lock:
            for name, batch in by_collection.items():
                self._ensure(name)
                self.client.upsert(name, batch)

    def search(
        self,
        kind: str,
        user_id: str,
        vector: list[float],
        limit: int,
        must: Sequence[models.Condition] = (),
        min_score: float | None = None,
    ) -> list[models.ScoredPoint]:
        name = self.collection(kind, user_id)
        with self._lock:
            if not self._readable(name):
                return []
            return self.client.query_points(
                name,
                query=vector,
                query_filter=models.Filter(must=[_only("user_id", user_id), *must]),
                limit=limit,
                score_threshold=min_score,
            ).points

    def get(self, kind: str, user_id: str, point_id: str) -> models.Record | None:
        name = self.collection(kind, user_id)
        with self._lock:
            if not self._readable(name):
                return None
            found = self.client.retrieve(name, [point_id], with_payload=True)
        if not found or (found[0].payload or {}).get("user_id") != user_id:
            return None
        return found[0]

    def count(self, kind: str, user_id: str) -> int:
        name = self.collection(kind, user_id)
        with self._lock:
            if not self._readable(name):
                return 0
            return self.client.count(
                name, count_filter=models.Filter(must=[_only("user_id", user_id)]), exact=True
            ).count

    def delete(self, kind: str, user_id: str, must: Sequence[models.Condition]) -> None:
        """Delete this user's points that also match `must`."""
        name = self.collection(kind, user_id)
        with self._lock:
            if not self._readable(name):
                return
            self.client.delete(
                name,
                points_selector=models.FilterSelector(
                    filter=models.Filter(must=[_only("user_id", user_id), *must])
                ),
            )
