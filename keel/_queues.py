"""Task queue names (DESIGN.md §2).

A deployment can run beside another on the same namespace by prefixing every queue; the
workflow derives the prefix from its own queue, so a prefixed agent worker sends its
activities to equally prefixed planner, reasoner, tool and memory workers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from keel.durable import AGENT_QUEUE as AGENT
from keel.durable import HTTP_QUEUE as HTTP
from keel.durable import LLM_QUEUE as LLM
from keel.durable import MEMORY_QUEUE as MEMORY
from keel.durable import PLANNER_QUEUE as PLANNER
from keel.durable import SANDBOX_QUEUE as SANDBOX
from keel.durable import TOOLS_QUEUE as TOOLS

__all__ = [
    "AGENT",
    "HTTP",
    "LLM",
    "MEMORY",
    "PLANNER",
    "SANDBOX",
    "TOOLS",
    "Queues",
    "fairness_key",
]


@dataclass(frozen=True)
class Queues:
    prefix: str = ""

    @classmethod
    def for_agent_queue(cls, agent_queue: str) -> Queues:
        """The queues of the deployment an agent queue belongs to; an agent queue named
        otherwise (or the replayer's placeholder) uses the unprefixed queues."""
        return cls(agent_queue.removesuffix(AGENT) if agent_queue.endswith(AGENT) else "")

    def name(self, base: str) -> str:
        return self.prefix + base

    @property
    def agent(self) -> str:
        return self.name(AGENT)

    @property
    def planner(self) -> str:
        return self.name(PLANNER)

    @property
    def llm(self) -> str:
        return self.name(LLM)

    @property
    def tools(self) -> str:
        return self.name(TOOLS)

    @property
    def memory(self) -> str:
        return self.name(MEMORY)


# Temporal caps a fairness key at 64 bytes.
FAIRNESS_KEY_BYTES = 64


def fairness_key(user_id: str) -> str:
    """The key Temporal's task-queue fairness shares a queue's dispatch by: one per user, so
    one user's backlog of steps cannot hold back another user's. A user id too long for a
    key is replaced by its digest."""
    if len(user_id.encode()) <= FAIRNESS_KEY_BYTES:
        return user_id
    return "sha256:" + hashlib.sha256(user_id.encode()).hexdigest()[:48]
