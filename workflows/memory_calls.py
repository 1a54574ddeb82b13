"""The AgentTask's calls to its memory and catalog: recall, the tool catalog, the cache,
fact extraction and remembering the episode.

Memory saves money and adds context; it never decides a task's outcome: a cache that cannot
answer is a miss, an extraction that fails leaves no facts.
"""

from __future__ import annotations

import re

from temporalio import workflow
from temporalio.exceptions import ActivityError

from keel import durable
from keel._core.budget import BudgetExhausted
from keel._workflow_tools import DEFAULT_SUBAGENTS, resolve_catalog
from keel.contracts import (
    CacheAnswer,
    CacheHit,
    CacheLookup,
    CacheStore,
    CatalogRef,
    Extraction,
    ExtractionRequest,
    Recall,
    RecallRequest,
    Remembered,
    RememberRequest,
    TaskStatus,
    ToolSpec,
    Triple,
)
from workflows import activity_options as options
from workflows.state import TaskState

RECALL_LIMIT = 3
ASK_HUMAN_PATCH = "keel-ask-human-only-when-a-person-answers"
_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|me|my|mine|we|our|us)\b", re.IGNORECASE)


async def recall(task: TaskState) -> Recall:
    task.set_status(TaskStatus.RECALLING, f"recalling memory of user {task.user_id}")
    return await workflow.execute_activity(
        durable.RECALL,
        RecallRequest(
            user_id=task.user_id, query=task.request.task, limit=RECALL_LIMIT, compact=task.lean
        ),
        result_type=Recall,
        task_queue=task.queues.memory,
        summary=f"recall: memory of user {task.user_id}",
        **options.MEMORY,
    )


async def catalog(task: TaskState) -> dict[str, ToolSpec]:
    """The tool activities' catalog, plus what the workflow does itself: asking a person
    and the sub-agents (none inside a sub-agent: delegation is one level deep).

    A planning run names the catalog by reference: the planner worker rebuilds it, and each
    plan comes back with the specs of the tools it calls (no catalog round trip, and no
    catalog in history). Runs started before that, ReAct runs, and runs continued from one
    that fetched the catalog, fetch it with the `list_tools` activity."""
    request = task.request
    agents = request.subagents if request.subagents is not None else DEFAULT_SUBAGENTS
    if workflow.info().parent is not None:
        agents = []
    task.subagents = {a.name: a for a in agents}
    carried = request.carried
    if task.lean and request.strategy == "plan" and (carried is None or carried.tools is not None):
        task.catalog_ref = CatalogRef(
            allowed_tools=request.allowed_tools,
            ask_human=request.human.questions,
            subagents=request.subagents if agents else [],  # None: the defaults
        )
        own = resolve_catalog(list(carried.tools or []) if carried else [], task.catalog_ref)
        task.tools = {t.name: t for t in own}
        return task.tools
    listed = await workflow.execute_activity(
        durable.LIST_TOOLS,
        result_type=list[ToolSpec],
        task_queue=task.queues.tools,
        summary="list tools",
        **options.MEMORY,
    )
    # runs started before the patch offered ask_human to every plan, and replay that way
    asks = request.human.questions or not workflow.patched(ASK_HUMAN_PATCH)
    ref = CatalogRef(allowed_tools=request.allowed_tools, ask_human=asks, subagents=agents)
    task.tools = {t.name: t for t in resolve_catalog(listed, ref)}
    return task.tools


async def cache_lookup(
    task: TaskState, kind: str, key: str, per_user: bool, semantic: bool
) -> CacheHit | None:
    """A cache miss when the memory worker cannot answer: the cache only saves money."""
    try:
        answer = await workflow.execute_activity(
            durable.CACHE_LOOKUP,
            CacheLookup(
                kind=kind, key=key, user_id=task.user_id if per_user else None, semantic=semantic
            ),
            result_type=CacheAnswer,
            task_queue=task.queues.memory,
            summary=f"cache lookup: {kind}",
            **options.CACHE,
        )
    except ActivityError as err:
        task.event(f"cache lookup failed, calling instead: {err.cause or err}")
        return None
    if answer.hit is not None:
        how = "exact" if answer.hit.exact else f"{answer.hit.score:.2f} similar"
        task.event(f"{kind}: answered from the cache ({how})")
    return answer.hit


async def cache_store(task: TaskState, entry: CacheStore) -> None:
    try:
        await workflow.execute_activity(
            durable.CACHE_STORE,
            entry,
            task_queue=task.queues.memory,
            summary=f"cache store: {entry.kind}",
            **options.CACHE,
        )
    except ActivityError as err:
        task.event(f"cache store failed (the result stands): {err.cause or err}")


async def remember(task: TaskState, answer: str, status: TaskStatus) -> None:
    task.set_status(TaskStatus.REMEMBERING, "remembering the episode")
    triples = await _extract_facts(task, answer)
    await workflow.execute_activity(
        durable.REMEMBER,
        RememberRequest(
            workflow_id=workflow.info().workflow_id,
            user_id=task.user_id,
            task=task.request.task,
            answer=answer,
            status=status.value,
            triples=triples,
            learned_at=workflow.now(),
            answer_cache_key=task.answer_cache_key,
        ),
        result_type=Remembered,
        task_queue=task.queues.memory,
        summary=f"remember: episode ({status.value}) and {len(triples)} facts",
        **options.MEMORY,
    )


async def _extract_facts(task: TaskState, answer: str) -> list[Triple]:
    """Facts worth keeping, by the small model; none when the budget is spent or the model
    fails: the task's result never depends on its memory upkeep. A task that says nothing
    about its user ("I", "my", "we", ...) is not sent: the call would cost money to find
    nothing personal."""
    if not _FIRST_PERSON.search(task.request.task):
        return []
    try:
        remaining = task.book.require("extracting facts")
    except BudgetExhausted:
        return []  # a spent budget is how most tasks end: nothing to say about it
    try:
        extraction = await options.call_model(
            durable.EXTRACT_FACTS,
            ExtractionRequest(
                task=task.request.task,
                answer=answer,
                max_usd=remaining,
                max_tokens=task.book.remaining_tokens(),
            ),
            Extraction,
            task.queues.planner,
            summary="extract facts for memory",
            refusal="no budget left to extract facts",
            priority=task.priority,
        )
    except (BudgetExhausted, ActivityError) as err:
        task.event(f"no facts extracted: {err}")
        return []
    if extraction.usage is not None:
        task.book.book_model(extraction.usage)
    if extraction.error is not None:
        task.event(f"no facts extracted: {extraction.error}")
    return extraction.triples
