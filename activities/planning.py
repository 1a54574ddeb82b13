"""The `plan` activity: one model call turns the task into a whole plan graph.

The output is constrained to a JSON schema built from the tool catalog (each step's `args`
must match its tool's input schema), then costed from the tools' metadata: the model chooses
tools and arguments; prices and latencies come from the catalog, not from the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.grounding import ground
from activities.models.base import Message, ModelRequest
from activities.models.router import TYPICAL_REASONER_CALL, ModelRouter
from activities.tools.search import words
from keel import durable
from keel._converter import describe_validation_error
from keel._core.untrusted import DATA_RULE, quoted
from keel._logging import activity_logger
from keel._plans import answer_errors, output_text
from keel._workflow_tools import resolve_catalog
from keel.contracts import (
    Plan,
    PlanRequest,
    PlanResponse,
    PlanStep,
    StepResult,
    StepStatus,
    ToolSpec,
)

MAX_PLAN_STEPS = 6
PLAN_MAX_TOKENS = 400
PLAN_TOKENS_PER_STEP = 70  # a long plan (TaskRequest.max_plan_steps) may write this much a step
RESULT_PREVIEW = 300

SYSTEM = (
    """You plan the tool calls of an agent's task. Reply with JSON only:
{"steps": [{"id": "s1", "tool": "<tool>", "args": {<its arguments>}, "depends_on": []}], "answer": "<the answer, {{s1.value}} where a result goes>"}
One step per calculation or lookup; steps without depends_on run in parallel. Take numbers
and names from the task or from results; never invent one.
In an argument, {{s1}} is s1's output and {{s1.<field>}} one field of it (list s1 in
depends_on).
"answer" reaches the user with the results filled in and no model reading them again: every
number or fact in it is a {{...}}. Leave it out only when answering needs judgement.
When a step needs a value that another step must find first, plan the finding steps with
"then": "plan": you will plan the rest seeing their results.
"when": "s1.value >= 100" runs a step only if the condition holds.
The tools and the answer must cost less than the budget left.
"""
    + DATA_RULE
)

# The prompt's labels: planning_prompt writes them and the scripted model
# (activities/models/scripted.py) reads the prompt back by them, so the two cannot drift.
TASK = "Task: "
TOOLS = "Tools:"
FILES = "Files: "
BUDGET = "Budget left: $"
ANSWER_SHARE = ", of which writing the answer takes about $"
MEMORY = "Relevant memory:"
DONE = "Already done (depend on these ids to use them; do not repeat them):"
FAILURES = "Earlier attempts failed; plan around these errors:"
SOLVE = (
    "Plan only what is left, using the values above, and write the answer "
    "(no steps when nothing is left)."
)

# Demonstrations as prior chat turns (small models follow one far better than a
# description), on tasks unlike any real one (planets), so that no value in them fits a real
# task: one task answered from parallel steps, one that gathers and then solves.
EXAMPLE_TASKS = (
    "Compute 13**3 and what does planets.md say about Mars?",
    "How many moons do Mars and Jupiter have together (planets.md)?",
)
_MARS = '{"query": "Mars moons", "limit": 1}'
_JUPITER = '{"query": "Jupiter moons", "limit": 1}'
EXAMPLE_PLANS = (
    '{"steps": [{"id": "s1", "tool": "calculator", "args": {"expression": "13**3"}, '
    '"depends_on": []}, {"id": "s2", "tool": "search_docs", "args": {"query": "Mars", '
    '"limit": 1}, "depends_on": []}], "answer": "13**3 = {{s1.value}}. '
    'planets.md: {{s2.matches[0].text}}"}',
    f'{{"steps": [{{"id": "s1", "tool": "search_docs", "args": {_MARS}, "depends_on": []}}, '
    f'{{"id": "s2", "tool": "search_docs", "args": {_JUPITER}, "depends_on": []}}], '
    '"then": "plan"}',
)
EXAMPLE_DONE = (
    f'- s1: search_docs({_MARS}) -> "Mars has 2 moons, Phobos and Deimos."\n'
    f'- s2: search_docs({_JUPITER}) -> "Jupiter has 95 known moons."'
)
EXAMPLE_SOLVE = (
    '{"steps": [{"id": "s3", "tool": "calculator", "args": {"expression": "2+95"}, '
    '"depends_on": []}], "answer": "Mars and Jupiter have {{s3.value}} moons together."}'
)


def demonstrations() -> list[Message]:
    first, gather = EXAMPLE_TASKS
    solve = f"{TASK}{gather}\n\n{DONE}\n{EXAMPLE_DONE}\n\n{SOLVE}"
    return [
        Message("user", f"{TASK}{first}"),
        Message("assistant", EXAMPLE_PLANS[0]),
        Message("user", f"{TASK}{gather}"),
        Message("assistant", EXAMPLE_PLANS[1]),
        Message("user", solve),
        Message("assistant", EXAMPLE_SOLVE),
    ]


# The catalog a plan may choose from is cut to the tools most likely to help (a small
# model given every tool puts irrelevant ones into its plans).
MAX_OFFERED_TOOLS = 6
# A bounded integer argument with at most this many values becomes an enum in the grammar
# (llama.cpp's converter ignores minimum/maximum: a limit of 1,000,000 would decode).
MAX_ENUM_INTEGERS = 64


class _DraftStep(BaseModel):
    id: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    when: str | None = None


class _Draft(BaseModel):
    steps: list[_DraftStep]
    answer: str | None = None
    then: Literal["answer", "plan"] = "answer"


def step_ids(done: Collection[str], limit: int = MAX_PLAN_STEPS) -> list[str]:
    """Ids a new plan may use: `s1`, `s2`, ... skipping those completed steps already hold."""
    free = (f"s{i}" for i in range(1, limit + len(done) + 1) if f"s{i}" not in done)
    return list(free)[:limit]


def plan_max_tokens(max_steps: int | None) -> int:
    return (
        PLAN_MAX_TOKENS
        if max_steps is None
        else max(PLAN_MAX_TOKENS, PLAN_TOKENS_PER_STEP * max_steps)
    )


def plan_output_schema(
    tools: list[ToolSpec],
    files: list[str],
    done: Collection[str] = (),
    limit: int = MAX_PLAN_STEPS,
) -> dict[str, Any]:
    """The grammar the model decodes under: one branch per tool with that tool's arguments."""
    ids = step_ids(done, limit)
    deps = ids + sorted(done)
    branches = []
    for spec in tools:
        args = grammar_schema(spec.input_schema)
        if spec.name == "read_file" and files:
            args["properties"]["path"] = {"type": "string", "enum": files}
        args["additionalProperties"] = False
        branches.append(
            {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "enum": ids},
                    "tool": {"const": spec.name},
                    "args": args,
                    "depends_on": {"type": "array", "items": {"enum": deps}, "maxItems": 3},
                    "when": {"type": "string", "maxLength": 120},
                },
                "required": ["id", "tool", "args", "depends_on"],
                "additionalProperties": False,
            }
        )
    return {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {"anyOf": branches},
                "minItems": 0 if done else 1,  # the solve round may only answer
                "maxItems": limit,
            },
            "answer": {"type": "string"},
            "then": {"enum": ["answer", "plan"]},
        },
        "required": ["steps"],
        "additionalProperties": False,
    }


def decoding_schema(
    request: PlanRequest, files: list[str], done: Collection[str], small: bool
) -> dict[str, Any]:
    """The plan grammar for the tools `request` offers; a small model's is narrowed to the
    numbers, words and references the request holds (activities/grounding.py)."""
    limit = request.max_steps or MAX_PLAN_STEPS
    schema = plan_output_schema(request.tools, files, done, limit)
    if not small:
        return schema
    fields = dict.fromkeys(f for spec in request.tools for f in output_fields(spec.output_schema))
    return ground(schema, request, step_ids(done, limit) + sorted(done), list(fields))


# Length bounds unroll into one grammar rule per character; the validator checks them instead.
_GRAMMAR_UNFRIENDLY = ("title", "minLength", "maxLength")


def grammar_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        low, high = schema.get("minimum"), schema.get("maximum")
        # two ifs: the first narrows low and high for the second
        if schema.get("type") == "integer" and isinstance(low, int) and isinstance(high, int):  # noqa: SIM102
            if 0 <= high - low < MAX_ENUM_INTEGERS:
                return {"enum": list(range(low, high + 1))}
        return {k: grammar_schema(v) for k, v in schema.items() if k not in _GRAMMAR_UNFRIENDLY}
    if isinstance(schema, list):
        return [grammar_schema(v) for v in schema]
    return schema


def one_line(text: str) -> str:
    """The text with its line breaks as spaces: every item of a prompt's list is one line."""
    return " ".join(text.split())


def tool_line(spec: ToolSpec, latency: bool = True) -> str:
    """One line per tool: its name, arguments, the output fields a plan can refer to (with
    the latency, in the planner's prompt), description and price."""
    props = ", ".join(spec.input_schema.get("properties", {}))
    about = one_line(spec.description)
    price = f"${spec.cost_per_call_usd:.6f}/call"
    fields = ""
    if latency:
        price += f", ~{spec.avg_latency_ms:.0f} ms"
        fields = " -> " + ", ".join(output_fields(spec.output_schema))
    return f"- {spec.name}({props}){fields}: {about} [{price}]"


def output_fields(schema: dict[str, Any]) -> list[str]:
    """How a reference reaches each output field: `value`, `matches[0].text`."""
    defs = schema.get("$defs", {})
    fields = []
    for name, prop in schema.get("properties", {}).items():
        items = prop.get("items", {}) if prop.get("type") == "array" else {}
        if "$ref" in items:
            items = defs.get(str(items["$ref"]).removeprefix("#/$defs/"), {})
        inner = list(items.get("properties", {}))
        if "text" in inner:  # the field answers quote; the rest only lengthen the prompt
            inner = ["text"]
        fields += [f"{name}[0].{f}" for f in inner] if inner else [name]
    return fields


_ARITHMETIC = re.compile(r"\d\s*(?:\*\*|[-+*/%])\s*\(?\d")
_FILE_NAME = re.compile(r"\b[\w-]+\.(?:md|txt|csv|json)\b")
# What a task's words say it needs beyond the tools' own words: computing, or documents
# (words as search_docs matches them: stemmed, common words dropped).
_CUES: dict[str, set[str]] = {
    "calculator": words(
        "compute calculate sum total together difference grow growth more less times "
        "average percent share many much hours days minutes seconds"
    ),
    "read_file": words("read file document according"),
    "search_docs": words("find document according mention"),
    "list_files": words("files documents list available"),
    # the catch-all for what no other tool does: writing, explaining, judging
    "ask_reasoner": words("write explain why question reason judge"),
}


def relevance(task: str, spec: ToolSpec) -> float:
    """How much a tool looks like it helps with the task: shared words, the tool's cues,
    arithmetic for the calculator and file names for the document tools."""
    text = task.lower()
    asked = words(text)
    own = words(f"{spec.name.replace('_', ' ')} {spec.description}")
    score = len(asked & own) + 2 * len(asked & _CUES.get(spec.name, set()))
    if spec.name == "calculator" and _ARITHMETIC.search(text):
        score += 5
    if spec.name in ("read_file", "search_docs") and _FILE_NAME.search(text):
        score += 5
    return score


def offered_tools(
    task: str, tools: list[ToolSpec], limit: int = MAX_OFFERED_TOOLS
) -> list[ToolSpec]:
    """The tools the planner may choose from: all of them when they are few, otherwise the
    `limit` most relevant to the task (catalog order among equals)."""
    if len(tools) <= limit:
        return tools
    ranked = sorted(range(len(tools)), key=lambda i: (-relevance(task, tools[i]), i))
    keep = set(ranked[:limit])
    return [t for i, t in enumerate(tools) if i in keep]


def planning_prompt(
    request: PlanRequest,
    files: list[str],
    answer_usd: float | None = None,
    demonstrate: bool = True,
) -> list[Message]:
    """The planner's messages; `answer_usd`, when given, is what writing the answer will take
    of the budget left (the plan is refused unless its tools and the answer fit);
    `demonstrate`: with the demonstrations, for a small model."""
    lines = [f"{TASK}{request.task}", "", TOOLS, *(tool_line(spec) for spec in request.tools)]
    if files:
        lines.append(f"{FILES}{', '.join(files)}")
    budget = f"{BUDGET}{request.remaining_usd:.6f}"
    if answer_usd is not None:
        budget += f"{ANSWER_SHARE}{answer_usd:.6f}"
    lines.append(budget)
    if request.context:
        lines += ["", MEMORY, *(f"- {quoted(c)}" for c in request.context)]
    done = [r for r in request.completed if r.status == StepStatus.SUCCEEDED]
    if done:
        lines += ["", DONE]
        for r in done:
            lines.append(
                f"- {r.step_id}: {r.tool}({json.dumps(r.args)}) -> "
                f"{quoted(output_text(r)[:RESULT_PREVIEW])}"
            )
    if request.failures:
        lines += ["", FAILURES, *(f"- {quoted(f)}" for f in request.failures)]
    if done:
        lines += ["", SOLVE]
    shown = demonstrations() if demonstrate else []
    return [Message("system", SYSTEM), *shown, Message("user", "\n".join(lines))]


_ANSWER_KEY = re.compile(r',\s*"answer"\s*:\s*"')


def without_cut_answer(text: str) -> _Draft | None:
    """The plan in `text` when only its written answer is broken, cut off at the token limit
    (a small model rambling numbers): the steps without it, so the answer model writes the
    answer from their results, as for an answer that does not fit (`answer_problems`)."""
    cuts = list(_ANSWER_KEY.finditer(text))
    if not cuts:
        return None
    try:
        return _Draft.model_validate_json(text[: cuts[-1].start()] + "}")
    except ValidationError:
        return None


def drop_repeats(draft: _Draft) -> _Draft:
    """Merge steps that repeat an earlier step's tool and arguments exactly (small models loop);
    dependencies on a dropped step point to the step it repeated."""
    kept: list[_DraftStep] = []
    first: dict[str, str] = {}  # call signature -> id of the step kept for it
    renamed: dict[str, str] = {}
    for step in draft.steps:
        signature = json.dumps(
            [step.tool, step.args, sorted(step.depends_on), step.when], sort_keys=True
        )
        if signature in first:
            renamed[step.id] = first[signature]
            continue
        first[signature] = step.id
        kept.append(step)
    for step in kept:
        step.depends_on = list(dict.fromkeys(renamed.get(d, d) for d in step.depends_on))
    return _Draft(steps=kept)


def plans_nothing_new(draft: _Draft, done: Collection[StepResult]) -> bool:
    """A solve round whose steps all repeat calls already done (same tool, same arguments):
    planning on would only see the same results again, so it answers."""
    ran = [r for r in done if r.status == StepStatus.SUCCEEDED]
    return bool(ran) and all(
        any(r.tool == s.tool and r.args == s.args for r in ran) for s in draft.steps
    )


def answer_problems(draft: _Draft, request: PlanRequest) -> list[str]:
    """Why the plan's written answer cannot be shown: references to steps or fields that do
    not exist. (A small model cannot write made-up numbers: its grammar holds only the
    request's, activities/grounding.py.)"""
    if draft.answer is None:
        return []
    tools = {s.name: s for s in request.tools}
    # unvalidated: the workflow validates the steps; here only the answer is judged
    steps = [PlanStep.model_construct(id=s.id, tool=s.tool, args=s.args) for s in draft.steps]
    known = {s.id for s in steps} | {r.step_id for r in request.completed}
    written = Plan.model_construct(steps=steps, answer=draft.answer)
    return answer_errors(written, tools, known)


def cost_plan(draft: _Draft, request: PlanRequest, synthesis_usd: float, model: str) -> Plan:
    specs = {s.name: s for s in request.tools}
    drafted = drop_repeats(draft).steps
    # The grammar lets a dependency name any step id, and a small model names one it never
    # plans ("s3" in a two-step plan): waiting on nothing is no wait. (A reference to such a
    # step in an argument or a condition still makes the plan invalid.)
    known = {d.id for d in drafted} | {
        r.step_id for r in request.completed if r.status == StepStatus.SUCCEEDED
    }
    steps = []
    for d in drafted:
        spec = specs.get(d.tool)
        steps.append(
            PlanStep(
                id=d.id,
                tool=d.tool,
                args=d.args,
                depends_on=[x for x in d.depends_on if x in known],
                when=d.when or None,
                expected_cost_usd=spec.cost_per_call_usd if spec else 0.0,
                expected_latency_ms=spec.avg_latency_ms if spec else 0.0,
            )
        )
    then = "answer" if plans_nothing_new(draft, request.completed) else draft.then
    # A plan that writes its own answer needs no model to write it (unless it plans on).
    templated = draft.answer is not None and then == "answer"
    return Plan(
        version=request.version,
        steps=steps,
        model=model,
        synthesis_estimate_usd=0.0 if templated else synthesis_usd,
        answer=draft.answer,
        then=then,
    )


class PlanningActivities:
    """`catalog` gives the specs of the tool activities (the tool registry of this process,
    built from the same settings as the tool worker's): a plan request that names its
    catalog by reference is resolved against it."""

    def __init__(
        self,
        router: ModelRouter,
        docs_dir: Path,
        catalog: Callable[[], list[ToolSpec]] | None = None,
    ) -> None:
        self.router, self.docs_dir, self.catalog = router, docs_dir, catalog

    def _resolved(self, request: PlanRequest) -> PlanRequest:
        if request.catalog is None:
            return request
        if self.catalog is None:
            raise ApplicationError(
                "this planner worker has no tool catalog; build it with one "
                "(workers/planner.py does)",
                type="CatalogUnavailable",
                non_retryable=True,
            )
        tools = resolve_catalog(self.catalog(), request.catalog)
        return request.model_copy(update={"tools": tools})

    def _files(self) -> list[str]:
        if not self.docs_dir.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.docs_dir)) for p in self.docs_dir.rglob("*") if p.is_file()
        )

    @activity.defn(name=durable.PLAN)
    async def plan(self, request: PlanRequest) -> PlanResponse:
        log = activity_logger()
        by_ref = request.catalog is not None
        request = self._resolved(request)
        files = self._files()
        done = {r.step_id for r in request.completed if r.status == StepStatus.SUCCEEDED}
        synthesis_usd = self.router.estimate_usd("reasoner", *TYPICAL_REASONER_CALL)
        # a small model is shown demonstrations, and decodes under the narrowed grammar
        small = self.router.model_for(request.role).needs_demonstrations
        offered = request.model_copy(update={"tools": offered_tools(request.task, request.tools)})
        routed = await self.router.complete(
            request.role,
            ModelRequest(
                messages=planning_prompt(offered, files, synthesis_usd, small),
                max_tokens=plan_max_tokens(request.max_steps),
                json_schema=decoding_schema(offered, files, done, small),
            ),
            max_usd=request.max_usd,
            max_tokens=request.max_tokens,
        )
        try:
            draft = _Draft.model_validate_json(routed.text)
        except ValidationError as err:
            cut = any("EOF" in str(e.get("msg", "")) for e in err.errors())  # the token limit
            salvaged = without_cut_answer(routed.text) if cut else None
            if salvaged is None:
                log.info("planner output is not a plan", output=routed.text[:500])
                return PlanResponse(
                    error=describe_validation_error(err, "plan JSON"), usage=routed.usage
                )
            log.info("answer cut off at the token limit: dropped", output=routed.text[-200:])
            draft = salvaged
        broken = answer_problems(draft, request)
        if broken:
            # the written answer only saves the answer model's call: without it the steps
            # still run, and the answer model writes the answer from their results
            log.info("answer template dropped", problems=broken, answer=(draft.answer or "")[:300])
            draft = draft.model_copy(update={"answer": None})
        plan = cost_plan(draft, request, synthesis_usd, routed.usage.model)
        log.info(
            "planned", role=request.role, steps=len(plan.steps), expected_usd=plan.expected_cost_usd
        )
        if not by_ref:
            return PlanResponse(plan=plan, usage=routed.usage)
        # the workflow validates and runs the plan with the specs of the tools it calls
        called = {s.tool for s in plan.steps}
        return PlanResponse(
            plan=plan,
            usage=routed.usage,
            tools=[t for t in request.tools if t.name in called],
            offered=[t.name for t in request.tools],
        )
