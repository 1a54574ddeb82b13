"""What recall hands the planner: facts, cache hits and episodes within a token budget.

Facts come first (short and usually what matters: the user's preferences), then passages
of the user's documents, then cached answers to similar requests, then earlier episodes by
relevance. A line that does not fit
is left out whole rather than cut mid-sentence. Tokens are estimated at 4 characters each:
the memory worker does not know which model's tokenizer will read the context.
"""

from __future__ import annotations

from collections.abc import Sequence

from activities.memory.graph import from_tool_output
from keel.contracts import CacheHit, DocumentChunk, Episode, Fact

CHARS_PER_TOKEN = 4
ANSWER_CHARS = 200
DOCUMENT_CHARS = 400


def tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def fact_line(fact: Fact) -> str:
    told = "fact from a tool's output, unverified" if from_tool_output(fact) else "fact"
    return (
        f"{told}: {fact.subject} {fact.relation} = {fact.object} "
        f"(since {fact.valid_from.date().isoformat()})"
    )


def cache_line(hit: CacheHit) -> str:
    answer = str(hit.value.get("answer") or hit.value.get("text") or hit.value)
    return f"answered before ({hit.score:.2f} similar): {hit.key} -> {answer[:ANSWER_CHARS]}"


def document_line(chunk: DocumentChunk) -> str:
    return f"from {chunk.source}: {' '.join(chunk.text.split())[:DOCUMENT_CHARS]}"


def episode_line(episode: Episode) -> str:
    return f"earlier task: {episode.task} -> {episode.answer[:ANSWER_CHARS]}"


def build_context(
    facts: Sequence[Fact],
    documents: Sequence[DocumentChunk],
    cached: Sequence[CacheHit],
    episodes: Sequence[Episode],
    max_tokens: int,
) -> tuple[list[str], int]:
    lines: list[str] = []
    used = 0
    candidates = (
        [fact_line(f) for f in facts]
        + [document_line(c) for c in documents]
        + [cache_line(h) for h in cached]
        + [episode_line(e) for e in episodes]
    )
    for line in candidates:
        cost = tokens(line)
        if used + cost <= max_tokens:
            lines.append(line)
            used += cost
    return lines, used
