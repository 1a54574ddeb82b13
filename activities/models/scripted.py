"""A deterministic model for tests and demos (like pydantic-ai's FunctionModel): it reads the
real messages, as a real model does, and answers by simple rules.

It recognises what is asked by the system prompt (the plan, a ReAct step, the answer, fact
extraction, an ask_reasoner question) and reads what its rules need back from the prompt,
with the labels and formatters the activities build it with, so a prompt that forgets the
task, the tools or the budget fails here too (loudly: `ModelBadRequest`, never a silent empty
plan). By default it plans with rules read off the task (arithmetic -> calculator, file names
-> read_file, otherwise ask_reasoner, or free search_docs when the budget left cannot pay for
the large model and the answer), plans only what the prompt says is not done yet, plays the
ReAct baseline one call per step, answers by quoting the step results, extracts "my X is Y"
statements as facts and reads "my X" in a task from the facts in its memory context. Tests
script exact responses per task with `script()`.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from activities import planning, react, reasoning
from activities.memory import extraction
from activities.models.base import Completion, Message, ModelClient, ModelRequest
from activities.tools import reasoner
from keel._core.untrusted import unquoted
from keel.errors import ModelBadRequest

_ARITHMETIC = re.compile(r"\(?\d+(?:\.\d+)?(?:\s*(?:\*\*|[-+*/%])\s*\(?\d+(?:\.\d+)?\)?)+")
_FILE = re.compile(r"\b[\w-]+\.(?:md|txt|csv|json)\b")
_MY_X_IS_Y = re.compile(r"\bmy ((?:[a-z]+ ){0,2}[a-z]+) is ([\w+#.-]*\w)", re.IGNORECASE)
# A fact as recall writes it (activities/memory/context.py fact_line) about the user.
_FACT_LINE = re.compile(r"^fact: user ([a-z0-9_]+) = (.+?) \(since ")


# --- reading the prompts back ------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """A call the prompt says was made: a finished plan step or a ReAct action."""

    tool: str
    args: dict[str, Any]
    id: str = ""
    result: str = ""


@dataclass(frozen=True)
class PlanPrompt:
    task: str
    tools: dict[str, float]  # name -> price per call
    remaining_usd: float
    answer_usd: float  # what writing the answer will take of it
    context: list[str] = field(default_factory=list)
    done: list[Done] = field(default_factory=list)
    purpose: ClassVar[str] = "plan"


@dataclass(frozen=True)
class ReactPrompt:
    task: str
    tools: dict[str, float]
    done: list[Done] = field(default_factory=list)
    purpose: ClassVar[str] = "react"


@dataclass(frozen=True)
class SynthesisPrompt:
    task: str
    results: str
    purpose: ClassVar[str] = "synthesize"


@dataclass(frozen=True)
class ExtractionPrompt:
    task: str
    answer: str
    purpose: ClassVar[str] = "extract"


@dataclass(frozen=True)
class QuestionPrompt:
    task: str  # the question
    purpose: ClassVar[str] = "ask"


Prompt = PlanPrompt | ReactPrompt | SynthesisPrompt | ExtractionPrompt | QuestionPrompt

# planning.tool_line's format, with or without the latency (the ReAct prompt has none).
_TOOL_LINE = re.compile(
    r"- (?P<name>[^\s(]+)\([^)]*\)(?: -> [^:]*)?:.*\[\$(?P<usd>\d+\.\d+)/call(?:, ~\d+ ms)?\]"
)
_BUDGET_LINE = re.compile(
    re.escape(planning.BUDGET)
    + r"(?P<left>-?\d+\.\d+)(?:"
    + re.escape(planning.ANSWER_SHARE)
    + r"(?P<answer>\d+\.\d+))?$"
)
_DONE_LINE = re.compile(r"- (?P<id>[^\s:]+): (?P<tool>[^\s(]+)\(")


def _unreadable(purpose: str, what: str) -> ModelBadRequest:
    return ModelBadRequest(f"scripted model: the {purpose} prompt {what}")


def _user_text(messages: Sequence[Message], purpose: str, index: int = -1) -> str:
    if len(messages) < 2 or messages[index].role != "user":
        raise _unreadable(purpose, "has no user message where its builder puts one")
    return messages[index].content


def _task_and_rest(text: str, label: str, end: str, purpose: str) -> tuple[str, str]:
    """The task after `label` up to the `end` marker, and the text after the marker."""
    if not text.startswith(label):
        raise _unreadable(purpose, f"does not start with the task ({label!r})")
    task, found, rest = text[len(label) :].partition(end)
    if not found:
        raise _unreadable(purpose, f"has no {end.strip()!r} after the task")
    if not task.strip():
        raise _unreadable(purpose, "names an empty task")
    return task, rest


def _tools(lines: list[str]) -> tuple[dict[str, float], list[str]]:
    """The tool lines at the head of `lines` (name -> price) and the lines after them."""
    tools: dict[str, float] = {}
    for n, line in enumerate(lines):
        match = _TOOL_LINE.fullmatch(line)
        if match is None:
            return tools, lines[n:]
        tools[match["name"]] = float(match["usd"])
    return tools, []


def _sections(text: str, headers: Sequence[str]) -> dict[str, str]:
    """The text under each header present, the headers in the order the prompt writes them."""
    marks: list[tuple[str, int, int]] = []
    at = 0
    for header in headers:
        start = text.find(f"\n\n{header}\n", at)
        if start >= 0:
            at = start + len(header) + 3
            marks.append((header, start, at))
    return {
        header: text[body : marks[n + 1][1] if n + 1 < len(marks) else len(text)]
        for n, (header, _, body) in enumerate(marks)
    }


def _done_steps(section: str) -> list[Done]:
    """One `- s1: calculator({"expression": "6*7"}) -> 42` line per finished step."""
    steps = []
    for line in section.split("\n"):
        match = _DONE_LINE.match(line)
        if match is None:
            continue
        try:
            args, end = json.JSONDecoder().raw_decode(line, match.end())
        except ValueError:
            continue
        if isinstance(args, dict) and line.startswith(") -> ", end):
            steps.append(Done(match["tool"], args, id=match["id"]))
    return steps


def read_plan_prompt(messages: Sequence[Message]) -> PlanPrompt:
    purpose = PlanPrompt.purpose
    text = _user_text(messages, purpose)
    task, rest = _task_and_rest(text, planning.TASK, f"\n\n{planning.TOOLS}\n", purpose)
    tools, lines = _tools(rest.split("\n"))
    if lines and lines[0].startswith(planning.FILES):
        lines = lines[1:]
    budget = _BUDGET_LINE.match(lines[0]) if lines else None
    if budget is None:
        raise _unreadable(purpose, f"has no {planning.BUDGET!r} line after the tools")
    sections = _sections("\n".join(lines), (planning.MEMORY, planning.DONE, planning.FAILURES))
    memory = sections.get(planning.MEMORY, "").split("\n")
    return PlanPrompt(
        task=task,
        tools=tools,
        remaining_usd=float(budget["left"]),
        answer_usd=float(budget["answer"] or 0),
        context=[unquoted(line[2:]) for line in memory if line.startswith('- "')],
        done=_done_steps(sections.get(planning.DONE, "")),
    )


def read_react_prompt(messages: Sequence[Message]) -> ReactPrompt:
    purpose = ReactPrompt.purpose
    text = _user_text(messages, purpose, 1)
    task, rest = _task_and_rest(text, planning.TASK, f"\n\n{planning.TOOLS}\n", purpose)
    tools, _ = _tools(rest.split("\n"))
    turns = messages[2:]
    done = []
    for action, observation in zip(turns[::2], turns[1::2], strict=False):
        try:
            call = json.loads(action.content) if action.role == "assistant" else None
        except json.JSONDecodeError:
            call = None
        if not isinstance(call, dict) or not observation.content.startswith(react.OBSERVATION):
            raise _unreadable(purpose, "has a turn that is not an action and its observation")
        result = observation.content.removeprefix(react.OBSERVATION)
        if result.startswith('"'):  # a result, quoted as data (an error reads "error: ...")
            result = unquoted(result)
        done.append(Done(str(call.get("tool")), call.get("args", {}), result=result))
    if len(turns) % 2:
        raise _unreadable(purpose, "ends with an action that has no observation")
    return ReactPrompt(task=task, tools=tools, done=done)


def read_synthesis_prompt(messages: Sequence[Message]) -> SynthesisPrompt:
    purpose = SynthesisPrompt.purpose
    text = _user_text(messages, purpose)
    task, rest = _task_and_rest(text, reasoning.TASK, f"\n\n{reasoning.RESULTS}\n", purpose)
    results = rest.partition(f"\n\n{reasoning.MEMORY}\n")[0]
    return SynthesisPrompt(task=task, results="" if results == reasoning.NO_RESULTS else results)


def read_extraction_prompt(messages: Sequence[Message]) -> ExtractionPrompt:
    purpose = ExtractionPrompt.purpose
    text = _user_text(messages, purpose)
    task, answer = _task_and_rest(text, extraction.TASK, f"\n{extraction.ANSWER}", purpose)
    return ExtractionPrompt(task=task, answer=answer)


def read_question(messages: Sequence[Message]) -> QuestionPrompt:
    question = _user_text(messages, QuestionPrompt.purpose)
    if not question.strip():
        raise _unreadable(QuestionPrompt.purpose, "asks an empty question")
    return QuestionPrompt(task=question)


# Each activity's system prompt says what it asks for.
_READERS: dict[str, Callable[[Sequence[Message]], Prompt]] = {
    planning.SYSTEM: read_plan_prompt,
    react.SYSTEM: read_react_prompt,
    reasoning.SYSTEM: read_synthesis_prompt,
    extraction.SYSTEM: read_extraction_prompt,
    reasoner.SYSTEM: read_question,
}


def read_prompt(messages: Sequence[Message]) -> Prompt | None:
    """What an activity's prompt asks and carries; None for a prompt no activity builds.
    Raises ModelBadRequest when an activity's prompt lacks what its builder should write."""
    if not messages or messages[0].role != "system":
        return None
    reader = _READERS.get(messages[0].content)
    return reader(messages) if reader else None


# --- the default rules -------------------------------------------------------------------


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


def rule_based_calls(task: str, tools: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls a task needs, read off its text."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for expression in _ARITHMETIC.findall(task):
        calls.append(("calculator", {"expression": expression.strip()}))
    for path in dict.fromkeys(_FILE.findall(task)):
        calls.append(("read_file", {"path": path}))
    if not calls:
        calls.append(("ask_reasoner", {"question": task}))
    return [c for c in calls if c[0] in tools]


# The answer a planner that writes its own answer puts in the plan, per tool: {id} is the
# step's id. A plan with any other tool leaves the answer to the answer model.
_TEMPLATES = {
    "calculator": "{expression} = {{{{{id}.value}}}}",
    "read_file": "{path}: {{{{{id}.text}}}}",
    "search_docs": "{{{{{id}.matches[0].text}}}}",
}


def answer_template(steps: list[dict[str, Any]]) -> str | None:
    if not steps or any(s["tool"] not in _TEMPLATES for s in steps):
        return None
    return "\n".join(_TEMPLATES[s["tool"]].format(id=s["id"], **s["args"]) for s in steps)


def rule_based_plan(prompt: PlanPrompt, with_answer: bool = False) -> dict[str, object]:
    """A plan like a sensible planner's: the strongest tools the budget affords (the large
    model when it fits, free keyword search when it does not), only the work not yet done;
    `with_answer`: with the answer as a template over the steps when the tools allow."""
    calls = rule_based_calls(resolve_from_memory(prompt.task, prompt.context), list(prompt.tools))
    total = sum(prompt.tools[tool] for tool, _ in calls) + prompt.answer_usd
    if total > prompt.remaining_usd and "search_docs" in prompt.tools:
        calls = [
            ("search_docs", {"query": str(args["question"])})
            if tool == "ask_reasoner"
            else (tool, args)
            for tool, args in calls
        ]
    finished = [(d.tool, d.args) for d in prompt.done]
    taken = {d.id for d in prompt.done}
    ids = (f"s{i}" for i in range(1, 100) if f"s{i}" not in taken)
    steps = [
        {"id": next(ids), "tool": tool, "args": args, "depends_on": []}
        for tool, args in calls
        if (tool, args) not in finished
    ]
    template = answer_template(steps) if with_answer else None
    return {"steps": steps} if template is None else {"steps": steps, "answer": template}


def react_decision(prompt: ReactPrompt) -> dict[str, object]:
    """The next ReAct action: the first needed call not yet tried, then the answer."""
    tried = [(d.tool, d.args) for d in prompt.done]
    for tool, args in rule_based_calls(prompt.task, list(prompt.tools)):
        if (tool, args) not in tried:
            return {"thought": f"I need {tool}.", "tool": tool, "args": args}
    results = "\n".join(f"{d.tool}: {d.result}" for d in prompt.done)
    return {
        "thought": "I can answer now.",
        "tool": react.FINISH,
        "answer": f"Answer to: {prompt.task}\n{results}",
    }


def default_answer(
    prompt: Prompt | None, request: ModelRequest, plans_answers: bool = False
) -> str:
    """What the rules answer when no script does."""
    if isinstance(prompt, PlanPrompt):
        return json.dumps(rule_based_plan(prompt, plans_answers))
    if isinstance(prompt, ReactPrompt):
        return json.dumps(react_decision(prompt))
    if isinstance(prompt, SynthesisPrompt):
        return f"Answer to: {prompt.task}\n{prompt.results.strip()}".strip()
    if isinstance(prompt, ExtractionPrompt):
        return json.dumps(rule_based_facts(prompt.task))
    return f"Scripted answer to: {request.messages[-1].content}"


class ScriptedModel(ModelClient):
    """`plans_answers`: plans carry their answer as a template where the tools allow, as a
    good planner's do; off, every answer is written by the answer model (the path most
    tests check)."""

    def __init__(self, name: str = "scripted", plans_answers: bool = False) -> None:
        self.name = name
        self.plans_answers = plans_answers
        self._scripts: dict[tuple[str, str], deque[str]] = {}

    def renamed(self, name: str) -> ScriptedModel:
        """The same model (same scripts) under another priced name, e.g. to stand in for a
        large model in routing tests."""
        twin = ScriptedModel(name, self.plans_answers)
        twin._scripts = self._scripts
        return twin

    def script(self, task_contains: str, purpose: str, *responses: str) -> None:
        """Answer calls with this purpose (plan, react, synthesize, extract, ask) for tasks
        containing the text, in order; the last response repeats."""
        self._scripts[(task_contains, purpose)] = deque(responses)

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(len(m.content) // 4 + 4 for m in messages)

    async def complete(self, request: ModelRequest) -> Completion:
        started = time.perf_counter()
        try:
            prompt = read_prompt(request.messages)  # once: for the scripts and the rules
            text = self._scripted(prompt) or default_answer(prompt, request, self.plans_answers)
        except ModelBadRequest as err:  # an activity's prompt lacks what it should carry
            raise err.to_application_error() from err
        text = text[: request.max_tokens * 4]  # a real model stops at max_tokens too
        return Completion(
            text=text,
            input_tokens=self.count_tokens(request.messages),
            output_tokens=max(1, len(text) // 4),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def _scripted(self, prompt: Prompt | None) -> str | None:
        if prompt is None:
            return None
        for (needle, wanted), responses in self._scripts.items():
            if wanted == prompt.purpose and needle in prompt.task and responses:
                return responses.popleft() if len(responses) > 1 else responses[0]
        return None
