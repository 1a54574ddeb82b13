"""Documents in a user's long-term memory: text split into chunks, searched by meaning.

A document is identified by its source (e.g. a path): memorizing the same source again
replaces its chunks. Chunk ids derive from user, source and position, so a retried write
overwrites instead of duplicating.
"""

from __future__ import annotations

import uuid

from qdrant_client import models

from activities.memory.vectors import VectorStore
from keel.contracts import Document, DocumentChunk

KIND = "documents"
CHUNK_CHARS = 800
_NAMESPACE = uuid.UUID("9a4e2f61-0c3b-4d7a-b1e8-5f2c7d9e3a14")


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs packed up to `size` characters; a longer paragraph is cut into pieces."""
    pieces: list[str] = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        pieces += [paragraph[i : i + size] for i in range(0, len(paragraph), size)]
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + 2 + len(piece) <= size:
            packed[-1] += "\n\n" + piece
        else:
            packed.append(piece)
    return packed


class DocumentStore:
    def __init__(self, vectors: VectorStore) -> None:
        self.vectors = vectors

    def remember(self, user_id: str, document: Document) -> int:
        parts = chunks(document.text)
        same_source = models.FieldCondition(
            key="source", match=models.MatchValue(value=document.source)
        )
        self.vectors.delete(KIND, user_id, [same_source])  # a new version replaces the old
        self.vectors.upsert(
            KIND,
            [
                (
                    str(uuid.uuid5(_NAMESPACE, f"{user_id}\x1f{document.source}\x1f{i}")),
                    part,
                    {"user_id": user_id, "source": document.source, "chunk": i, "text": part},
                )
                for i, part in enumerate(parts)
            ],
        )
        return len(parts)

    def recall(
        self, user_id: str, vector: list[float], limit: int, min_score: float
    ) -> list[DocumentChunk]:
        hits = self.vectors.search(KIND, user_id, vector, limit, min_score=min_score)
        return [
            DocumentChunk(source=str(p["source"]), text=str(p["text"]), score=h.score)
            for h in hits
            if (p := h.payload or {})
        ]
