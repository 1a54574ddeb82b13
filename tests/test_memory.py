"""Memory through the real stack: Qdrant local mode with the MiniLM embedder, the embedded
graph, and whole AgentTask runs on the scripted model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from activities.memory.cache import Cache
from activities.memory.context import build_context, tokens
from activities.memory.episodes import EpisodeStore
from activities.memory.graph_sqlite import SqliteGraphStore
from activities.memory.vectors import LOCAL_SHARDS, VectorStore, VectorStoreError
from keel._queues import Queues
from keel.client import memorize, start_task
from keel.contracts import (
    SHARED_SCOPE,
    CacheHit,
    CacheLookup,
    CacheStore,
    Document,
    DocumentChunk,
    Episode,
    Fact,
    MemorizeRequest,
    TaskRequest,
    TaskResult,
    TaskStatus,
)
from keel.testing import Stack
from tests.conftest import REPO, scripted_components, unique
from workers.process import build_all, workers_running


def new_user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def run(stack: Stack, task: str, user: str) -> tuple[TaskResult, WorkflowHandle[Any, Any]]:
    handle = await start_task(stack.client, TaskRequest(task=task, user_id=user))
    return await handle.result(), handle


async def activity_results(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    history = await handle.fetch_history()
    found = []
    for event in history.events:
        if event.HasField("activity_task_completed_event_attributes"):
            data = event.activity_task_completed_event_attributes.result.payloads[0].data
            found.append(json.loads(data))
    return found


async def recalled(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    return next(r for r in await activity_results(handle) if isinstance(r, dict) and "facts" in r)


async def test_second_task_uses_a_fact_learned_in_the_first(stack: Stack) -> None:
    user = new_user("ana")
    first, _ = await run(stack, unique("Note that my preferred language is Kotlin."), user)
    assert first.status == TaskStatus.COMPLETED
    memory_calls = [e for e in first.ledger.entries if e.role == "memory"]
    assert len(memory_calls) == 1  # the extraction was a booked model call

    second, handle = await run(
        stack, unique("Write a hello world program in my preferred language"), user
    )

    recall = await recalled(handle)
    [fact] = stack.components.graph.facts(user)
    assert (fact.relation, fact.object) == ("preferred_language", "Kotlin")
    assert any("preferred_language = Kotlin" in line for line in recall["context"])
    # a compact recall: the context and what the answer depends on, not the records again
    assert recall["knowledge"] == [fact.id] and recall["facts"] == recall["episodes"] == []
    # the planner read the fact from its context and planned with it
    assert second.plan is not None
    [step] = second.plan.steps
    assert step.tool == "ask_reasoner" and "in Kotlin" in step.args["question"]


async def test_a_contradicting_fact_replaces_the_old_one_in_recall(stack: Stack) -> None:
    user = new_user("ben")
    await run(stack, unique("Remember: my preferred language is Ruby."), user)
    await run(stack, unique("Update: my preferred language is Elixir now."), user)
    _, handle = await run(stack, unique("Which is my preferred language?"), user)

    recall = await recalled(handle)
    facts = [line for line in recall["context"] if line.startswith("fact:")]
    assert len(facts) == 1 and "preferred_language = Elixir" in facts[0]
    history = stack.components.graph.history(user, "user", "preferred_language")
    assert [(f.object, f.valid_to is None) for f in history] == [("Ruby", False), ("Elixir", True)]


async def test_one_users_memories_never_reach_another_users_recall(stack: Stack) -> None:
    bob, mallory = new_user("bob"), new_user("mallory")
    secret = unique("my project codename is Falcon. What is 1234*2 for the secret project?")
    await run(stack, secret, bob)
    question = unique("Explain the risks of the secret project codename")  # ask_reasoner
    bobs, _ = await run(stack, question, bob)
    assert [s.tool for s in bobs.steps] == ["ask_reasoner"]

    # mallory asks bob's very words: no episode, fact or cache entry of bob's reaches her
    theirs_result, mallory_handle = await run(stack, question, mallory)
    _, bob_handle = await run(stack, unique("What about my project codename?"), bob)

    assert theirs_result.ledger.cache_hits == 0 and not theirs_result.steps[0].cached
    theirs = await recalled(mallory_handle)
    assert theirs["context"] == [] and theirs["knowledge"] == []
    mine = await recalled(bob_handle)
    assert any("Falcon" in line for line in mine["context"])
    assert any(line.startswith("earlier task:") for line in mine["context"])
    assert [f.object for f in stack.components.graph.facts(bob)] == ["Falcon"]
    assert len(mine["knowledge"]) == 1  # bob's one fact


def test_no_user_may_take_the_shared_memory_scope() -> None:
    with pytest.raises(ValueError, match="reserved for memory shared by every user"):
        TaskRequest(task="hello", user_id=SHARED_SCOPE)
    with pytest.raises(ValueError, match="reserved"):
        MemorizeRequest(user_id=SHARED_SCOPE, documents=[Document(source="a", text="b")])
    with pytest.raises(ValueError, match="memorize the files in several runs"):
        MemorizeRequest(
            user_id="u", documents=[Document(source=f"f{i}", text="x" * 800_000) for i in (1, 2)]
        )


def test_the_user_filter_isolates_users_who_share_a_partition(stack: Stack) -> None:
    """Partitions are for speed; the filter is what keeps users apart, even in one shard."""
    vectors = stack.components.vectors
    base = new_user("shard")
    shard = vectors.collection("episodes", base)
    neighbour = next(
        u
        for u in (f"{base}-{i}" for i in range(10 * LOCAL_SHARDS))
        if vectors.collection("episodes", u) == shard
    )
    store = EpisodeStore(vectors)
    for user, n in ((base, 3), (neighbour, 2)):
        for i in range(n):
            store.remember(
                f"wf-{user}-{i}",
                Episode(
                    id="", user_id=user, task=f"deploy service {i}", answer="ok", status="completed"
                ),
            )
    [query] = vectors.embedder.embed(["deploy service"])
    assert {e.user_id for e in store.recall(base, query, 10)} == {base}
    assert len(store.recall(neighbour, query, 10)) == 2


async def test_a_repeated_question_is_answered_from_the_cache(stack: Stack) -> None:
    user = new_user("cleo")
    question = unique("Explain how a transformer attention head works")
    first, _ = await run(stack, question, user)
    assert first.ledger.cache_hits == 0
    paid = [e for e in first.ledger.entries if e.kind == "model" and e.role != "memory"]

    # the same words: both the tool call and the answer come from the cache
    again, _ = await run(stack, question, user)
    assert again.status == TaskStatus.COMPLETED and again.answer == first.answer
    cached = [e for e in again.ledger.entries if e.cached]
    assert [(e.kind, e.name, e.usd) for e in cached] == [
        ("tool", "ask_reasoner", 0.0),
        ("model", "synthesize", 0.0),
    ]
    assert again.ledger.cache_hits == 2 and again.steps[0].cached
    assert again.llm_calls == first.llm_calls - 2 == len(paid) - 2

    # another wording of the question: a semantic hit on the tool call
    reworded = question.replace("Explain how", "Please explain how")
    third, _ = await run(stack, reworded, user)
    assert third.steps[0].cached and third.steps[0].output == first.steps[0].output

    # another user pays for their own answer: ask_reasoner results are personal
    other, _ = await run(stack, question, new_user("dan"))
    assert other.ledger.cache_hits == 0 and not other.steps[0].cached


def test_cache_threshold_ttl_and_scope(stack: Stack) -> None:
    cache = Cache(stack.components.vectors, threshold=0.9, ttl_s=60)
    user, now = new_user("eve"), 1_000_000.0
    cache.store(
        CacheStore(
            kind="tool.weather",
            key="What is the weather in Lisbon today?",
            user_id=user,
            value={"text": "sunny"},
        ),
        now=now,
    )

    def lookup(key: str, user_id: str | None = user, at: float = now + 1) -> CacheHit | None:
        return cache.lookup(CacheLookup(kind="tool.weather", key=key, user_id=user_id), now=at)

    exact = lookup("What is the weather in Lisbon today?")
    assert exact is not None and exact.exact and exact.value == {"text": "sunny"}
    similar = lookup("Tell me the weather in Lisbon today")
    assert similar is not None and not similar.exact and 0.9 <= similar.score < 1.0
    assert lookup("How do I bake sourdough bread?") is None  # below the threshold
    assert lookup("What is the weather in Lisbon today?", at=now + 61) is None  # expired
    assert lookup("What is the weather in Lisbon today?", user_id=new_user("other")) is None
    assert lookup("What is the weather in Lisbon today?", user_id=None) is None  # not shared


def test_recall_context_fits_its_token_budget() -> None:
    day = datetime(2026, 11, 1, tzinfo=UTC)
    facts = [
        Fact(id="f1", subject="user", relation="preferred_language", object="Go", valid_from=day)
    ]
    hits = [CacheHit(key="what is Go?", value={"answer": "a language"}, score=0.95, exact=False)]
    episodes = [
        Episode(id=f"e{i}", user_id="u", task=f"task {i} " * 20, answer="x" * 300, status="ok")
        for i in range(5)
    ]
    passages = [DocumentChunk(source="notes.md", text="Go  was\nmade at Google", score=0.8)]
    lines, used = build_context(facts, passages, hits, episodes, max_tokens=140)
    assert used <= 140 and used == sum(tokens(line) for line in lines)
    assert lines[0].startswith("fact: user preferred_language = Go")  # facts come first
    assert lines[1] == "from notes.md: Go was made at Google"
    assert lines[2].startswith("answered before")
    assert 0 < sum(line.startswith("earlier task") for line in lines) < 5  # the rest was cut
    assert build_context(facts, passages, hits, episodes, max_tokens=0) == ([], 0)


class _TinyEmbedder:
    name = "tiny-test-embedder"
    dimensions = 8

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[1.0] + [0.0] * 7 for _ in texts]


def test_a_different_embedding_size_is_refused_not_mixed(tmp_path: Path) -> None:
    from activities.memory.embedding import MiniLMEmbedder

    store = VectorStore.open(MiniLMEmbedder(), tmp_path)
    EpisodeStore(store).remember(
        "wf-1", Episode(id="", user_id="u", task="t", answer="a", status="completed")
    )
    store.close()
    other = VectorStore.open(_TinyEmbedder(), tmp_path)
    with pytest.raises(
        VectorStoreError, match=r"384-d vectors of minilm.*tiny-test-embedder \(8-d\)"
    ):
        EpisodeStore(other).recall("u", [1.0] + [0.0] * 7, 3)
    other.close()


async def test_remember_killed_mid_write_never_duplicates(stack: Stack, tmp_path: Path) -> None:
    """The memory worker dies (SIGKILL) after writing, before reporting; Temporal retries
    `remember` on a fresh worker, and the deterministic ids make the retry a no-op."""
    prefix = f"crash-{uuid.uuid4().hex[:6]}-"
    queues = Queues(prefix)
    settings = stack.settings.model_copy(update={"home": tmp_path})
    components, _ = scripted_components(settings, queues)
    user = new_user("kim")

    def memory_worker(*flags: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.memory_crash_worker",
                stack.address,
                prefix,
                str(tmp_path),
                *flags,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )

    others = build_all(stack.client, components, names=["agent", "planner", "llm", "tools"])
    async with workers_running(others):
        crashing = memory_worker("--crash")
        handle = await start_task(
            stack.client,
            TaskRequest(task=unique("Note: my favourite editor is Helix."), user_id=user),
            queues=queues,
        )
        assert await asyncio.wait_for(asyncio.to_thread(crashing.wait), 120) == -9
        healthy = memory_worker()
        try:
            result = await asyncio.wait_for(handle.result(), 120)
        finally:
            healthy.terminate()
            healthy.wait(30)

    assert result.status == TaskStatus.COMPLETED
    history = await handle.fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert max(attempts) == 2  # remember ran twice: once killed, once retried
    vectors = VectorStore.open(stack.components.vectors.embedder, settings.qdrant_dir)
    graph = SqliteGraphStore(settings.graph_path)
    try:
        assert EpisodeStore(vectors).count(user) == 1
        assert [f.object for f in graph.history(user, "user", "favourite_editor")] == ["Helix"]
    finally:
        vectors.close()
        graph.close()


async def test_memorized_documents_are_recalled_for_their_user_only(stack: Stack) -> None:
    owner, other = new_user("fay"), new_user("gus")
    notes = (
        "Team handbook.\n\nOur on-call rotation changes every Wednesday at 10:00 and the "
        "pager password is kept in the vault.\n\nLunch is at noon."
    )
    handle = await memorize(
        stack.client,
        MemorizeRequest(user_id=owner, documents=[Document(source="oncall.md", text=notes)]),
    )
    assert (await handle.result()).chunks == {"oncall.md": 1}
    # memorizing a new version of the same source replaces it
    notes_v2 = notes.replace("Wednesday", "Thursday")
    again = await memorize(
        stack.client,
        MemorizeRequest(user_id=owner, documents=[Document(source="oncall.md", text=notes_v2)]),
    )
    await again.result()

    _, mine = await run(stack, unique("When does the on-call rotation change?"), owner)
    _, theirs = await run(stack, unique("When does the on-call rotation change?"), other)
    recall = await recalled(mine)
    [passage] = [line for line in recall["context"] if line.startswith("from oncall.md:")]
    assert "Thursday" in passage and "Wednesday" not in passage  # the new version only
    assert len(recall["knowledge"]) == 1  # the passage, by digest (what the answer read)
    theirs_recall = await recalled(theirs)
    assert not any("oncall.md" in line for line in theirs_recall["context"])
    assert theirs_recall["knowledge"] == []


def test_memorize_refuses_an_unreadable_file_in_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "image.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    for path, why in ((tmp_path / "missing.md", "cannot read"), (binary, "not UTF-8 text")):
        done = subprocess.run(
            [sys.executable, "-m", "keel.cli", "memorize", str(path), "--user", "u"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        err = done.stderr.strip()
        assert done.returncode == 2 and err.startswith("keel: error: ") and why in err
        assert "\n" not in err
