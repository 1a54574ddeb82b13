"""What cached calls are looked up by. Durable: a changed key misses every cached entry."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from keel.contracts import CacheStore, StepResult, StepStatus
from keel.durable import SYNTHESIZE


def tool_call_key(args: dict[str, object]) -> str:
    """A tool call's key: its one text argument (so a semantic cache can compare meanings),
    or all of its arguments as canonical JSON."""
    values = list(args.values())
    if len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return json.dumps(args, sort_keys=True, default=str)


def answer_knowledge(fact_ids: Iterable[str], document_texts: Iterable[str]) -> list[str]:
    """What an answer depends on besides its results: the user's facts and documents, by id
    and by digest (episodes and cache lines change with every task and would defeat the
    answer cache)."""
    digests = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in document_texts]
    return list(fact_ids) + digests


def answer_key(task: str, knowledge: list[str], results: Iterable[StepResult]) -> str:
    """The same task over the same results and knowledge has the same answer: a digest of
    them (the results themselves need not travel twice)."""
    material = [task, knowledge] + [
        [r.tool, r.args, r.output] for r in results if r.status == StepStatus.SUCCEEDED
    ]
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def answer_entry(key: str, user_id: str, answer: str, workflow_id: str) -> CacheStore:
    """The cache entry of a task's written answer, under its `answer_key` (per user)."""
    return CacheStore(
        kind=SYNTHESIZE,
        key=key,
        user_id=user_id,
        value={"answer": answer},
        semantic=False,
        source=f"{workflow_id}/synthesize",
    )
