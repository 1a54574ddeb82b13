"""The structured memory: facts about a user as a graph of (subject, relation, object).

Two backends share one contract (tests/test_graph_contract.py runs against both):
`SqliteGraphStore` (embedded default, a file under KEEL_HOME) and `Neo4jGraphStore` (Bolt,
when KEEL_NEO4J_URL is set).

Semantics both keep:
- A relation is single-valued: a subject has one current object per relation. Asserting
  (user, preferred_language, Go) after (user, preferred_language, Python) closes the old
  fact (`valid_to` = the new fact's `valid_from`) instead of deleting it, so
  `facts(user, at=D)` answers "what did we know on date D".
- Re-asserting what is already current changes nothing. Names compare case-insensitively.
- A fact that arrives late (learned before the current one: concurrent tasks, retries) is
  kept as history, closed where the newer fact begins; it never replaces the newer fact.
- A fact's id is derived from the user, the source (workflow id and step) and the triple,
  so a retried `remember` writes nothing twice.
- A fact the task's own text does not state (its object came from the answer, so from a
  tool's output or a model) has a source ending in FROM_TOOL_OUTPUT, and recall shows it as
  such: a web page cannot pass for something the user said, nor replace it (the memory
  activity drops such a fact where the user stated one for the same subject and relation).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from keel.contracts import Fact, Triple

_NAMESPACE = uuid.UUID("3b0f7d4e-2a61-4f0e-8c55-61d0a9e4b7c2")
FACTS_LIMIT = 50


def fact_id(user_id: str, source: str, triple: Triple) -> str:
    parts = (user_id, source, key(triple.subject), triple.relation, key(triple.object))
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


FROM_TOOL_OUTPUT = "/from-tool-output"  # the source's suffix on a fact the task did not state


_STATED_MIN_CHARS = 3  # "a", "I", "2": found in any text, so proof of nothing


def stated_in(task: str, triple: Triple) -> bool:
    """Whether the task's own text names the triple's object, as whole words (the user said
    it): "Porto" in "I live in Porto", not "Port" nor "a"."""
    wanted = key(triple.object)
    if len(wanted.replace(" ", "")) < _STATED_MIN_CHARS:
        return False
    return re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", key(task)) is not None


def from_tool_output(fact: Fact) -> bool:
    return fact.source.endswith(FROM_TOOL_OUTPUT)


def key(name: str) -> str:
    """How entity names compare: trimmed, inner whitespace collapsed, case-folded."""
    return " ".join(name.split()).casefold()


def utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("fact times must be timezone-aware")
    return when.astimezone(UTC)


class GraphStore(Protocol):
    backend: str

    def assert_facts(
        self, user_id: str, triples: Sequence[Triple], at: datetime, source: str
    ) -> list[Fact]:
        """Store the triples as facts valid from `at`; returns the current fact for each
        (the existing one when it was already known)."""
        ...

    def facts(
        self,
        user_id: str,
        at: datetime | None = None,
        subject: str | None = None,
        limit: int = FACTS_LIMIT,
    ) -> list[Fact]:
        """Facts valid at `at` (now: the current ones), newest first."""
        ...

    def history(self, user_id: str, subject: str, relation: str) -> list[Fact]:
        """Every fact ever held for this subject and relation, oldest first."""
        ...

    def close(self) -> None: ...
