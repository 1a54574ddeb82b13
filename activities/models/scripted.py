"""A deterministic model for tests and demos (like pydantic-ai's TestModel/FunctionModel).

By default it plans with simple rules read off the task (arithmetic -> calculator, file
names -> read_file, otherwise ask_reasoner) and answers by quoting the step results. Tests
script exact responses per task with `script()`.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable

from activities.models.base import Completion, Message, ModelClient, ModelRequest

Responder = Callable[[ModelRequest], str]

_ARITHMETIC = re.compile(r"\(?\d+(?:\.\d+)?(?:\s*(?:\*\*|[-+*/%])\s*\(?\d+(?:\.\d+)?\)?)+")
_FILE = re.compile(r"\b[\w-]+\.(?:md|txt|csv|json)\b")


def rule_based_plan(task: str, tools: set[str]) -> dict[str, object]:
    steps: list[dict[str, object]] = []

    def add(tool: str, args: dict[str, object]) -> None:
        if tool in tools:
            steps.append({"id": f"s{len(steps) + 1}", "tool": tool, "args": args, "depends_on": []})

    for expression in _ARITHMETIC.findall(task):
        add("calculator", {"expression": expression.strip()})
    for path in dict.fromkeys(_FILE.findall(task)):
        add("read_file", {"path": path})
    if not steps:
        add("ask_reasoner", {"question": task})
    return {"steps": steps}


def default_responder(request: ModelRequest) -> str:
    meta = request.meta
    if meta.get("purpose") == "plan":
        tools = set(filter(None, meta.get("tools", "").split(",")))
        return json.dumps(rule_based_plan(meta.get("task", ""), tools))
    if meta.get("purpose") == "synthesize":
        results = meta.get("results", "").strip()
        return f"Answer to: {meta.get('task', '')}\n{results}".strip()
    return f"Scripted answer to: {request.messages[-1].content}"


class ScriptedModel(ModelClient):
    name = "scripted"

    def __init__(self, responder: Responder = default_responder) -> None:
        self._responder = responder
        self._scripts: dict[tuple[str, str], deque[str]] = {}

    def script(self, task_contains: str, purpose: str, *responses: str) -> None:
        """Answer calls with this purpose for tasks containing the text, in order; the last
        response repeats."""
        self._scripts[(task_contains, purpose)] = deque(responses)

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(len(m.content) // 4 + 4 for m in messages)

    async def complete(self, request: ModelRequest) -> Completion:
        started = time.perf_counter()
        text = self._scripted(request) or self._responder(request)
        text = text[: request.max_tokens * 4]  # a real model stops at max_tokens too
        return Completion(
            text=text,
            input_tokens=self.count_tokens(request.messages),
            output_tokens=max(1, len(text) // 4),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def _scripted(self, request: ModelRequest) -> str | None:
        task, purpose = request.meta.get("task", ""), request.meta.get("purpose", "")
        for (needle, wanted), responses in self._scripts.items():
            if wanted == purpose and needle in task and responses:
                return responses.popleft() if len(responses) > 1 else responses[0]
        return None
