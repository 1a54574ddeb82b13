"""Embedders: the packaged all-MiniLM-L6-v2 model run for real, and the OpenAI embedder
against a local HTTP server that speaks the embeddings wire format."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from activities.memory.embedding import (
    Embedder,
    MiniLMEmbedder,
    OpenAIEmbedder,
    RecentEmbeddings,
    build_embedder,
)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_minilm_dimensions_and_normalised(minilm: MiniLMEmbedder) -> None:
    vectors = minilm.embed(["I prefer Python", "The weather in Paris is rainy"])
    assert minilm.name == "minilm-l6-v2"
    assert len(vectors) == 2
    for v in vectors:
        assert len(v) == minilm.dimensions == 384
        assert all(isinstance(x, float) for x in v)
        assert norm(v) == pytest.approx(1.0, abs=1e-5)


def test_minilm_similar_sentences_score_higher(minilm: MiniLMEmbedder) -> None:
    query, similar, unrelated = minilm.embed(
        ["I prefer Python", "My favourite language is Python", "The weather in Paris is rainy"]
    )
    # Reference (sentence-transformers, fp32): 0.75 and -0.01.
    assert cosine(query, similar) > 0.6
    assert cosine(query, unrelated) < 0.2


def test_minilm_batch_equals_single(minilm: MiniLMEmbedder) -> None:
    texts = [
        "short",
        "Deploy the service to the staging cluster after the tests pass on the main branch.",
        "",
        "a somewhat longer sentence about agents remembering what they did last week " * 3,
    ]
    batched = minilm.embed(texts)
    for text, vector in zip(texts, batched, strict=True):
        (single,) = minilm.embed([text])
        assert cosine(single, vector) > 0.99999
        assert max(abs(x - y) for x, y in zip(single, vector, strict=True)) < 1e-4


def test_minilm_empty_and_long_texts(minilm: MiniLMEmbedder) -> None:
    assert minilm.embed([]) == []
    empty, long, longer = minilm.embed(["", "memory " * 1000, "memory " * 5000])
    assert norm(empty) == pytest.approx(1.0, abs=1e-5)
    # Cut at 256 tokens: past that, more of the same text changes nothing.
    assert cosine(long, longer) > 0.99999
    with pytest.raises(TypeError):
        minilm.embed("one string")  # type: ignore[arg-type]


async def test_minilm_from_threads(minilm: MiniLMEmbedder) -> None:
    texts = [f"episode number {i} about a task the agent ran" for i in range(8)]
    expected = minilm.embed(texts)
    results = await asyncio.gather(*(asyncio.to_thread(minilm.embed, [t]) for t in texts))
    for (got,), want in zip(results, expected, strict=True):
        assert cosine(got, want) > 0.99999


@dataclass
class FakeEmbeddings:
    """`POST /v1/embeddings` with deterministic vectors (not normalised, so that the
    embedder's normalisation shows); `fail_with` answers every request with that status."""

    dims: int = 8
    fail_with: int | None = None

    def __post_init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                if fake.fail_with is not None:
                    self._reply(fake.fail_with, {"error": {"message": "boom", "type": "x"}})
                    return
                dims = body.get("dimensions", fake.dims)
                data = [
                    {"object": "embedding", "index": i, "embedding": [len(text) + 1.0] * dims}
                    for i, text in enumerate(body["input"])
                ]
                data.reverse()  # the embedder must order by index
                self._reply(200, {"object": "list", "data": data, "model": body["model"]})

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def fake_openai() -> Iterator[FakeEmbeddings]:
    fake = FakeEmbeddings()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def test_openai_embedder(fake_openai: FakeEmbeddings) -> None:
    embedder = OpenAIEmbedder("my-embedder", "key", fake_openai.base_url, dimensions=8)
    embedder.batch_size = 2
    vectors = embedder.embed(["a", "", "abc"])
    assert embedder.name == "openai:my-embedder" and embedder.dimensions == 8
    assert [r["input"] for r in fake_openai.requests] == [["a", " "], ["abc"]]
    assert all("dimensions" not in r for r in fake_openai.requests)
    assert len(vectors) == 3
    assert all(norm(v) == pytest.approx(1.0) and len(v) == 8 for v in vectors)


def test_openai_embedder_shortened_and_errors(fake_openai: FakeEmbeddings) -> None:
    small = OpenAIEmbedder("text-embedding-3-small", "key", fake_openai.base_url, dimensions=4)
    assert len(small.embed(["x"])[0]) == 4
    assert fake_openai.requests[-1]["dimensions"] == 4

    wrong = OpenAIEmbedder("text-embedding-3-large", "key", fake_openai.base_url)
    assert wrong.dimensions == 3072
    with pytest.raises(RuntimeError, match="expected 1 vectors of 3072"):
        wrong.embed(["x"])

    fake_openai.fail_with = 500
    before = len(fake_openai.requests)
    with pytest.raises(openai.InternalServerError):
        small.embed(["x"])
    assert len(fake_openai.requests) == before + 1  # no retries


class _Counting:
    """Counts the texts it is asked to embed, around the real model."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner, self.name, self.dimensions = inner, inner.name, inner.dimensions
        self.asked: list[str] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.asked += texts
        return self.inner.embed(texts)


def test_recent_embeddings_embed_a_text_once_and_give_the_same_vectors(
    minilm: MiniLMEmbedder,
) -> None:
    counting = _Counting(minilm)
    recent = RecentEmbeddings(counting, size=2)
    first = recent.embed(["a task", "another task", "a task"])
    assert counting.asked == ["a task", "another task"]  # a repeat within one call, once
    assert first == minilm.embed(["a task", "another task", "a task"])
    assert recent.embed(["a task"]) == [first[0]]
    assert counting.asked == ["a task", "another task"]  # remembered
    recent.embed(["a third"])  # size 2: "another task", the least recent, goes
    recent.embed(["another task", "a task"])
    assert counting.asked == ["a task", "another task", "a third", "another task"]
    assert (recent.name, recent.dimensions) == (minilm.name, 384)
    with pytest.raises(TypeError):
        recent.embed("one str")


@dataclass
class _Settings:
    openai_api_key: str | None = "key"
    openai_base_url: str | None = "http://127.0.0.1:9/v1"


def test_build_embedder() -> None:
    settings = _Settings()
    assert isinstance(build_embedder("minilm", settings), MiniLMEmbedder)
    openai_default: Embedder = build_embedder("openai", settings)
    assert (openai_default.name, openai_default.dimensions) == (
        "openai:text-embedding-3-small",
        1536,
    )
    assert build_embedder("openai:text-embedding-ada-002", settings).dimensions == 1536
    assert build_embedder("openai:local-model", settings, dimensions=768).dimensions == 768
    with pytest.raises(ValueError, match="give dimensions"):
        build_embedder("openai:local-model", settings)
    for bad in ("bert", "minilm:large", "sentence-transformers"):
        with pytest.raises(ValueError, match=r"expected 'minilm' \(default\) or 'openai"):
            build_embedder(bad, settings)
