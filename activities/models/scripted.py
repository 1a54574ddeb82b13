"""A deterministic model for tests and demos (like pydantic-ai's TestModel/FunctionModel).

By default it plans with simple rules read off the task (arithmetic -> calculator, file
names -> read_file, otherwise ask_reasoner, or free search_docs when the budget cannot pay
for the large model), plans only what earlier plans left undone, plays the ReAct baseline
one call per step, answers by quoting the step results, extracts "my X is Y" statements as
facts and reads "my X" in a task from the facts in its memory context. Tests script exact
responses per task with `script()`.
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
_MY_X_IS_Y = re.compile(r"\bmy ((?:[a-z]+ ){0,2}[a-z]+) is ([\w+#.-]*\w)", re.IGNORECASE)
_FACT_LINE = re.compile(r"^fact: user ([a-z0-9_]+) = (.+?) \(since ")


def rule_based_facts(task: str) -> dict[str, object]:
    """Facts the user stated about themselves: "my preferred language is Python"."""
    facts = [
        {"subject": "user", "relation": "_".join(what.lower().split()), "object": value}
        for what, value in _MY_X_IS_Y.findall(task)
    ]
    return {"facts": facts}


def resolve_from_memory(task: str, context: list[str]) -> str:
    """Replace "my preferred language" with what the memory says about the user."""
    for line in context:
        match = _FACT_LINE.match(line)
        if match:
            relation, value = match.groups()
            phrase = re.compile(rf"\bmy {re.escape(relation.replace('_', ' '))}\b", re.IGNORECASE)
            task = phrase.sub(value, task)
    return task


def rule_based_calls(task: str, tools: set[str]) -> list[tuple[str, dict[str, object]]]:
    """The tool calls a task needs, read off its text."""
    calls: list[tuple[str, dict[str, object]]] = []
    for expression in _ARITHMETIC.findall(task):
        calls.append(("calculator", {"expression": expression.strip()}))
    for path in dict.fromkeys(_FILE.findall(task)):
        calls.append(("read_file", {"path": path}))
    if not calls:
        calls.append(("ask_reasoner", {"question": task}))
    return [c for c in calls if c[0] in tools]


def rule_based_plan(
    task: str,
    tools: set[str],
    costs: dict[str, float] | None = None,
    remaining_usd: float = float("inf"),
    synthesis_usd: float = 0.0,
    done: list[dict[str, object]] | None = None,
    context: list[str] | None = None,
) -> dict[str, object]:
    """A plan like a sensible planner's: the strongest tools the budget affords (the large
    model when it fits, free keyword search when it does not), only the work not yet done."""
    costs = costs or {}
    calls = rule_based_calls(resolve_from_memory(task, context or []), tools)
    total = sum(costs.get(tool, 0.0) for tool, _ in calls) + synthesis_usd
    if total > remaining_usd and "search_docs" in tools:
        calls = [
            ("search_docs", {"query": str(args["question"])})
            if tool == "ask_reasoner"
            else (tool, args)
            for tool, args in calls
        ]
    done = done or []
    finished = [(d["tool"], d["args"]) for d in done]
    taken = {str(d["id"]) for d in done}
    ids = (f"s{i}" for i in range(1, 100) if f"s{i}" not in taken)
    steps = [
        {"id": next(ids), "tool": tool, "args": args, "depends_on": []}
        for tool, args in calls
        if (tool, args) not in finished
    ]
    return {"steps": steps}


def react_decision(task: str, tools: set[str], done: list[dict[str, object]]) -> dict[str, object]:
    """The next ReAct action: the first needed call not yet tried, then the answer."""
    tried = [(d["tool"], d["args"]) for d in done]
    for tool, args in rule_based_calls(task, tools):
        if (tool, args) not in tried:
            return {"thought": f"I need {tool}.", "tool": tool, "args": args}
    results = "\n".join(f"{d['tool']}: {d.get('result', '')}" for d in done)
    return {
        "thought": "I can answer now.",
        "tool": "finish",
        "answer": f"Answer to: {task}\n{results}",
    }


def default_responder(request: ModelRequest) -> str:
    meta = request.meta
    tools = set(filter(None, meta.get("tools", "").split(",")))
    if meta.get("purpose") == "plan":
        return json.dumps(
            rule_based_plan(
                meta.get("task", ""),
                tools,
                costs=json.loads(meta.get("costs", "{}")),
                remaining_usd=float(meta.get("remaining_usd", "inf")),
                synthesis_usd=float(meta.get("synthesis_usd", "0")),
                done=json.loads(meta.get("done", "[]")),
                context=json.loads(meta.get("context", "[]")),
            )
        )
    if meta.get("purpose") == "extract":
        return json.dumps(rule_based_facts(meta.get("task", "")))
    if meta.get("purpose") == "react":
        return json.dumps(
            react_decision(meta.get("task", ""), tools, json.loads(meta.get("done", "[]")))
        )
    if meta.get("purpose") == "synthesize":
        results = meta.get("results", "").strip()
        return f"Answer to: {meta.get('task', '')}\n{results}".strip()
    return f"Scripted answer to: {request.messages[-1].content}"


class ScriptedModel(ModelClient):
    def __init__(self, responder: Responder = default_responder, name: str = "scripted") -> None:
        self.name = name
        self._responder = responder
        self._scripts: dict[tuple[str, str], deque[str]] = {}

    def renamed(self, name: str) -> ScriptedModel:
        """The same model (same scripts) under another priced name, e.g. to stand in for a
        large model in routing tests."""
        twin = ScriptedModel(self._responder, name)
        twin._scripts = self._scripts
        return twin

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
