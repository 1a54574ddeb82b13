"""Memory activities on `keel-memory`: recall before planning, remember after answering, and
the cache of expensive calls in between."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from activities.memory.cache import Cache
from activities.memory.context import build_context
from activities.memory.documents import DocumentStore
from activities.memory.episodes import EpisodeStore
from activities.memory.graph import (
    FROM_TOOL_OUTPUT,
    GraphStore,
    from_tool_output,
    stated_in,
)
from keel import durable
from keel._core.cache_keys import answer_entry, answer_knowledge
from keel._logging import activity_logger
from keel._pools import MEMORY, pool, run_in
from keel.contracts import (
    CacheAnswer,
    CacheLookup,
    CacheStore,
    Episode,
    Memorized,
    Recall,
    RecallRequest,
    RememberDocument,
    Remembered,
    RememberRequest,
    Triple,
)

CACHED_IN_CONTEXT = 2
DOCUMENTS_IN_CONTEXT = 2
DOCUMENT_MIN_SCORE = 0.3  # below this a passage is about something else


class MemoryActivities:
    def __init__(
        self,
        episodes: EpisodeStore,
        documents: DocumentStore,
        graph: GraphStore,
        cache: Cache,
        recall_tokens: int,
        threads: int,
    ) -> None:
        self.episodes, self.documents, self.graph, self.cache = episodes, documents, graph, cache
        self.pool = pool(MEMORY, threads)
        self.recall_tokens = recall_tokens

    def _recall(self, request: RecallRequest) -> Recall:
        [vector] = self.episodes.vectors.embedder.embed([request.query])
        episodes = self.episodes.recall(request.user_id, vector, request.limit)
        facts = self.graph.facts(request.user_id)
        documents = self.documents.recall(
            request.user_id, vector, DOCUMENTS_IN_CONTEXT, DOCUMENT_MIN_SCORE
        )
        cached = self.cache.similar(request.user_id, vector, CACHED_IN_CONTEXT)
        context, used = build_context(facts, documents, cached, episodes, self.recall_tokens)
        if request.compact:
            knowledge = answer_knowledge((f.id for f in facts), (d.text for d in documents))
            return Recall(context=context, context_tokens=used, knowledge=knowledge)
        return Recall(
            episodes=episodes,
            facts=facts,
            cached=cached,
            documents=documents,
            context=context,
            context_tokens=used,
        )

    @activity.defn(name=durable.RECALL)
    async def recall(self, request: RecallRequest) -> Recall:
        found = await run_in(self.pool, self._recall, request)
        activity_logger().info(
            "recalled",
            episodes=len(found.episodes),
            facts=len(found.facts),
            documents=len(found.documents),
            cached=len(found.cached),
            context_tokens=found.context_tokens,
        )
        return found

    def _remember(self, request: RememberRequest) -> Remembered:
        episode = Episode(
            id=request.workflow_id,
            user_id=request.user_id,
            task=request.task,
            answer=request.answer,
            status=request.status,
        )
        point = self.episodes.remember(request.workflow_id, episode)
        at = request.learned_at or datetime.now(UTC)
        source = f"{request.workflow_id}/remember"
        stated: list[Triple] = []
        learned: list[Triple] = []
        for triple in request.triples:
            (stated if stated_in(request.task, triple) else learned).append(triple)
        facts = self.graph.assert_facts(request.user_id, stated, at, source=source)
        if learned:
            # what a tool said never replaces what the user said (in this task or before)
            learned = [t for t in learned if not self._user_said(request.user_id, t)]
            facts += self.graph.assert_facts(
                request.user_id, learned, at, source=source + FROM_TOOL_OUTPUT
            )
        if request.answer_cache_key is not None:  # the task's answer, for the same task again
            self.cache.store(
                answer_entry(
                    request.answer_cache_key, request.user_id, request.answer, request.workflow_id
                )
            )
        return Remembered(episode_id=point, facts=facts)

    def _user_said(self, user_id: str, triple: Triple) -> bool:
        held = self.graph.history(user_id, triple.subject, triple.relation)
        return any(f.valid_to is None and not from_tool_output(f) for f in held)

    @activity.defn(name=durable.REMEMBER)
    async def remember(self, request: RememberRequest) -> Remembered:
        done = await run_in(self.pool, self._remember, request)
        activity_logger().info("remembered", point=done.episode_id, facts=len(done.facts))
        return done

    @activity.defn(name=durable.REMEMBER_DOCUMENT)
    async def remember_document(self, request: RememberDocument) -> Memorized:
        count = await run_in(self.pool, self.documents.remember, request.user_id, request.document)
        activity_logger().info("document remembered", source=request.document.source, chunks=count)
        return Memorized(chunks={request.document.source: count})

    @activity.defn(name=durable.CACHE_LOOKUP)
    async def cache_lookup(self, request: CacheLookup) -> CacheAnswer:
        hit = await run_in(self.pool, self.cache.lookup, request)
        activity_logger().info(
            "cache lookup", kind=request.kind, hit=hit is not None, exact=bool(hit and hit.exact)
        )
        return CacheAnswer(hit=hit)

    @activity.defn(name=durable.CACHE_STORE)
    async def cache_store(self, request: CacheStore) -> str:
        return await run_in(self.pool, self.cache.store, request)
