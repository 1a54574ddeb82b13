"""The one interface every model backend implements (DESIGN.md §5)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class ModelRequest:
    messages: list[Message]
    max_tokens: int = 512
    json_schema: dict[str, Any] | None = None  # constrain the output to this schema
    temperature: float = 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    latency_ms: float


class ModelClient(ABC):
    """A chat model: messages (+ optional JSON schema and limits) in, text and usage out."""

    name: str
    # A small local model follows a format far better after seeing it done (the planner
    # prompt then carries demonstrations); a large model reads the description.
    needs_demonstrations: bool = False

    @abstractmethod
    async def complete(self, request: ModelRequest) -> Completion: ...

    @abstractmethod
    def count_tokens(self, messages: list[Message]) -> int:
        """Input tokens these messages will cost (used to cap spend before calling)."""
