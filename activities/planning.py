"""The `plan` activity: one model call turns the task into a whole plan graph.

The output is constrained to a JSON schema built from the tool catalog (each step's `args`
must match its tool's input schema), then costed from the tools' metadata: the model chooses
tools and arguments; prices and latencies come from the catalog, not from the model.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from temporalio import activity

from activities.models.base import Message, ModelRequest
from activities.models.router import TYPICAL_REASONER_CALL, ModelRouter
from keel import durable
from keel._converter import describe_validation_error
from keel._logging import activity_logger
from keel._plans import output_text
from keel.contracts import Plan, PlanRequest, PlanResponse, PlanStep, StepStatus, ToolSpec

MAX_PLAN_STEPS = 6
PLAN_MAX_TOKENS = 400
PLAN_TOKENS_PER_STEP = 70  # a long plan (TaskRequest.max_plan_steps) may write this much a step
RESULT_PREVIEW = 300

SYSTEM = """You are the planner of an agent. Break the task into tool calls.
Reply with JSON only: {"steps": [{"id": "s1", "tool": "...", "args": {...}, "depends_on": []}]}.
Use as few steps as the task needs. Steps without depends_on run in parallel.
To use an earlier step's output inside a text argument write {{s1}} and list s1 in depends_on.
A step may add "when": a condition over earlier outputs such as "len(s1.matches) > 0" or
"s1.value >= 100"; it runs only if the condition holds (list s1 in depends_on).
Every tool shows its price: the tools and the answer must cost less than the budget left."""

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

# One worked example as a prior chat turn: small local models follow a demonstration far
# better than a description.
EXAMPLE_TASK = (
    "How many minutes are in 3 days (3*24*60), and what does notes.md say about holidays?"
)
EXAMPLE_PLAN = '{"steps": [{"id": "s1", "tool": "calculator", "args": {"expression": "3*24*60"}, "depends_on": []}, {"id": "s2", "tool": "read_file", "args": {"path": "notes.md"}, "depends_on": []}]}'


class _DraftStep(BaseModel):
    id: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    when: str | None = None


class _Draft(BaseModel):
    steps: list[_DraftStep]


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
                "minItems": 1,
                "maxItems": limit,
            }
        },
        "required": ["steps"],
        "additionalProperties": False,
    }


# Length bounds unroll into one grammar rule per character; the validator checks them instead.
_GRAMMAR_UNFRIENDLY = ("title", "minLength", "maxLength")


def grammar_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: grammar_schema(v) for k, v in schema.items() if k not in _GRAMMAR_UNFRIENDLY}
    if isinstance(schema, list):
        return [grammar_schema(v) for v in schema]
    return schema


def one_line(text: str) -> str:
    """The text with its line breaks as spaces: every item of a prompt's list is one line."""
    return " ".join(text.split())


def tool_line(spec: ToolSpec, latency: bool = True) -> str:
    """One line per tool: its name, arguments, description, price and latency."""
    props = ", ".join(spec.input_schema.get("properties", {}))
    about = one_line(spec.description)
    price = f"${spec.cost_per_call_usd:.6f}/call"
    if latency:
        price += f", ~{spec.avg_latency_ms:.0f} ms"
    return f"- {spec.name}({props}): {about} [{price}]"


def planning_prompt(
    request: PlanRequest, files: list[str], answer_usd: float | None = None
) -> list[Message]:
    """The planner's messages; `answer_usd`, when given, is what writing the answer will take
    of the budget left (the plan is refused unless its tools and the answer fit)."""
    lines = [f"{TASK}{request.task}", "", TOOLS, *(tool_line(spec) for spec in request.tools)]
    if files:
        lines.append(f"{FILES}{', '.join(files)}")
    budget = f"{BUDGET}{request.remaining_usd:.6f}"
    if answer_usd is not None:
        budget += f"{ANSWER_SHARE}{answer_usd:.6f}"
    lines.append(budget)
    if request.context:
        lines += ["", MEMORY, *(f"- {one_line(c)}" for c in request.context)]
    done = [r for r in request.completed if r.status == StepStatus.SUCCEEDED]
    if done:
        lines += ["", DONE]
        for r in done:
            lines.append(
                f"- {r.step_id}: {r.tool}({json.dumps(r.args)}) -> "
                f"{one_line(output_text(r)[:RESULT_PREVIEW])}"
            )
    if request.failures:
        lines += ["", FAILURES, *(f"- {f}" for f in request.failures)]
    return [
        Message("system", SYSTEM),
        Message("user", f"{TASK}{EXAMPLE_TASK}"),
        Message("assistant", EXAMPLE_PLAN),
        Message("user", "\n".join(lines)),
    ]


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


def cost_plan(draft: _Draft, request: PlanRequest, synthesis_usd: float, model: str) -> Plan:
    specs = {s.name: s for s in request.tools}
    steps = []
    for d in drop_repeats(draft).steps:
        spec = specs.get(d.tool)
        steps.append(
            PlanStep(
                id=d.id,
                tool=d.tool,
                args=d.args,
                depends_on=d.depends_on,
                when=d.when or None,
                expected_cost_usd=spec.cost_per_call_usd if spec else 0.0,
                expected_latency_ms=spec.avg_latency_ms if spec else 0.0,
            )
        )
    return Plan(
        version=request.version, steps=steps, model=model, synthesis_estimate_usd=synthesis_usd
    )


class PlanningActivities:
    def __init__(self, router: ModelRouter, docs_dir: Path) -> None:
        self.router, self.docs_dir = router, docs_dir

    def _files(self) -> list[str]:
        if not self.docs_dir.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.docs_dir)) for p in self.docs_dir.rglob("*") if p.is_file()
        )

    @activity.defn(name=durable.PLAN)
    async def plan(self, request: PlanRequest) -> PlanResponse:
        log = activity_logger()
        files = self._files()
        done = {r.step_id for r in request.completed if r.status == StepStatus.SUCCEEDED}
        synthesis_usd = self.router.estimate_usd("reasoner", *TYPICAL_REASONER_CALL)
        routed = await self.router.complete(
            request.role,
            ModelRequest(
                messages=planning_prompt(request, files, synthesis_usd),
                max_tokens=plan_max_tokens(request.max_steps),
                json_schema=plan_output_schema(
                    request.tools, files, done, request.max_steps or MAX_PLAN_STEPS
                ),
            ),
            max_usd=request.max_usd,
            max_tokens=request.max_tokens,
        )
        try:
            draft = _Draft.model_validate_json(routed.text)
        except ValidationError as err:
            log.info("planner output is not a plan", output=routed.text[:500])
            return PlanResponse(
                error=describe_validation_error(err, "plan JSON"), usage=routed.usage
            )
        plan = cost_plan(draft, request, synthesis_usd, routed.usage.model)
        log.info(
            "planned", role=request.role, steps=len(plan.steps), expected_usd=plan.expected_cost_usd
        )
        return PlanResponse(plan=plan, usage=routed.usage)
