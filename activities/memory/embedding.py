"""Text embeddings for episode recall.

First form: feature hashing of word unigrams and bigrams into a fixed-size, L2-normalised
vector. It is deterministic, needs no model download and finds episodes that share words;
the memory issue replaces it with a real sentence-embedding model.
"""

from __future__ import annotations

import hashlib
import math
import re

DIMENSIONS = 256
_WORD = re.compile(r"[a-z0-9]+")


def _bucket(feature: str) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % DIMENSIONS, (1.0 if value >> 63 else -1.0)


def embed(text: str) -> list[float]:
    words = _WORD.findall(text.lower())
    vector = [0.0] * DIMENSIONS
    for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
        index, sign = _bucket(feature)
        vector[index] += sign
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
