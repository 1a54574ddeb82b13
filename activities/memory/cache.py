"""A cache of expensive calls (reasoner answers, paid tools): exact first, then semantic.

An entry's id is derived from what it answers (kind, scope, canonical request), so an exact
lookup is one read by id and storing the same request again refreshes one entry. The
semantic lookup embeds the request and takes the nearest entry of the same kind and scope
whose similarity reaches the threshold (KEEL_CACHE_THRESHOLD). Entries expire after their
TTL (KEEL_CACHE_TTL_S unless the caller gives one). Personal results are scoped to their
user; shared ones live under the scope `*` that every user reads.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from qdrant_client import models

from activities.memory.vectors import SHARED, VectorStore
from keel.contracts import CacheHit, CacheLookup, CacheStore

KIND = "cache"
_NAMESPACE = uuid.UUID("0d7b4c1a-52e3-4b8e-9f6a-3c2d1e0f9a8b")


def cache_id(kind: str, scope: str, key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join((kind, scope, key))))


def _hit(payload: dict[str, Any], score: float, exact: bool) -> CacheHit:
    return CacheHit(key=payload["key"], value=payload["value"], score=score, exact=exact)


class Cache:
    def __init__(self, vectors: VectorStore, threshold: float, ttl_s: float) -> None:
        self.vectors, self.threshold, self.ttl_s = vectors, threshold, ttl_s

    def lookup(self, request: CacheLookup, now: float | None = None) -> CacheHit | None:
        now = time.time() if now is None else now
        scope = request.user_id or SHARED
        record = self.vectors.get(KIND, scope, cache_id(request.kind, scope, request.key))
        payload = record.payload if record is not None else None
        if payload and payload["key"] == request.key and payload["expires_at"] > now:
            return _hit(payload, 1.0, exact=True)
        if not request.semantic:
            return None
        [vector] = self.vectors.embedder.embed([request.key])
        hits = self.vectors.search(
            KIND,
            scope,
            vector,
            limit=1,
            must=[
                models.FieldCondition(key="kind", match=models.MatchValue(value=request.kind)),
                models.FieldCondition(key="semantic", match=models.MatchValue(value=True)),
                models.FieldCondition(key="expires_at", range=models.Range(gt=now)),
            ],
            min_score=self.threshold,
        )
        return _hit(hits[0].payload or {}, hits[0].score, exact=False) if hits else None

    def store(self, request: CacheStore, now: float | None = None) -> str:
        now = time.time() if now is None else now
        scope = request.user_id or SHARED
        point_id = cache_id(request.kind, scope, request.key)
        payload = {
            "user_id": scope,
            "kind": request.kind,
            "key": request.key,
            "value": request.value,
            "semantic": request.semantic,
            "stored_at": now,
            "expires_at": now + (request.ttl_s or self.ttl_s),
            "source": request.source,
        }
        # An exact-only entry is found by id, never by meaning: no need to embed its key.
        vectors = None if request.semantic else [self._placeholder()]
        self.vectors.upsert(KIND, [(point_id, request.key, payload)], vectors)
        # expired entries of this scope go as new ones come, so the cache does not only grow
        expired = models.FieldCondition(key="expires_at", range=models.Range(lte=now))
        self.vectors.delete(KIND, scope, [expired])
        return point_id

    def _placeholder(self) -> list[float]:
        return [1.0] + [0.0] * (self.vectors.embedder.dimensions - 1)

    def similar(self, user_id: str, vector: list[float], limit: int) -> list[CacheHit]:
        """Answers this user (or everyone) got before to requests like this one."""
        now = time.time()
        fresh = [
            models.FieldCondition(key="expires_at", range=models.Range(gt=now)),
            models.FieldCondition(key="semantic", match=models.MatchValue(value=True)),
        ]
        hits = [
            h
            for scope in (user_id, SHARED)
            for h in self.vectors.search(KIND, scope, vector, limit, fresh, self.threshold)
        ]
        hits.sort(key=lambda h: -h.score)
        return [_hit(h.payload or {}, h.score, exact=False) for h in hits[:limit]]
