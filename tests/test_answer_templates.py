"""Plans that write their own answer (no model call after the tools), field references, the
solve round (gather, then plan the rest seeing the results) and the catalog a plan may use.

The pure rules first, then whole tasks on the real dev server with the scripted model.
"""

from __future__ import annotations

import json
from typing import Any

from activities import planning
from activities.planning import (
    _Draft,
    cost_plan,
    grammar_schema,
    offered_tools,
    plan_output_schema,
    planning_prompt,
)
from activities.tools.builtin import default_registry
from bench.suite import TASKS
from keel._plans import render_answer, resolve_args, validate_plan
from keel._workflow_tools import ASK_HUMAN, DEFAULT_SUBAGENTS, subagent_spec
from keel.contracts import (
    HumanPolicy,
    Plan,
    PlanRequest,
    PlanStep,
    StepResult,
    StepStatus,
    TaskRequest,
    TaskStatus,
    ToolSpec,
)
from keel.settings import Settings
from keel.testing import Stack
from tests.conftest import run_task, unique


def _catalog() -> dict[str, ToolSpec]:
    specs = default_registry(Settings()).specs()
    extra = [ASK_HUMAN, *(subagent_spec(a) for a in DEFAULT_SUBAGENTS)]
    return {s.name: s for s in [*specs, *extra]}


def _done(step_id: str, tool: str, output: dict[str, Any], ok: bool = True) -> StepResult:
    status = StepStatus.SUCCEEDED if ok else StepStatus.SKIPPED
    return StepResult(step_id=step_id, plan_version=1, tool=tool, status=status, output=output)


CALC = _done("s1", "calculator", {"value": 1144.9000000000001, "text": "1144.9"})
SEARCH = _done(
    "s2",
    "search_docs",
    {"matches": [{"path": "report.md", "line": 9, "text": "| Q3 | 23 |"}]},
)


# --- references and rendering --------------------------------------------------------------


def test_field_references_reach_inside_outputs() -> None:
    outputs = {"s1": CALC, "s2": SEARCH}
    args = {"expression": "{{s1.value}} * 2", "q": "{{ s2.matches[0].text }}", "all": "{{s1}}"}
    assert resolve_args(args, outputs) == {
        "expression": "1144.9 * 2",  # a float as people write it, not 1144.9000000000001
        "q": "| Q3 | 23 |",
        "all": "1144.9",  # the whole output: its text
    }
    # a field the output lacks, an index past the end, a step that did not run: empty
    missing = {"a": "{{s1.nope}}", "b": "{{s2.matches[3].text}}", "c": "{{s9.value}}"}
    assert resolve_args(missing, outputs) == {"a": "", "b": "", "c": ""}


def test_an_answer_template_renders_step_outputs() -> None:
    skipped = _done("s3", "calculator", {"value": 1.0}, ok=False)
    template = "Total: {{s1.value}}. Row: {{s2.matches[0].text}}.{{s3.value}}"
    outputs = {"s1": CALC, "s2": SEARCH, "s3": skipped}
    assert render_answer(template, outputs) == "Total: 1144.9. Row: | Q3 | 23 |."


def _plan(steps: list[dict[str, Any]], **fields: Any) -> Plan:
    return Plan(steps=[PlanStep(**{"depends_on": [], **s}) for s in steps], **fields)


CALCULATE = {"id": "s1", "tool": "calculator", "args": {"expression": "2+2"}}
SEARCH_STEP = {"id": "s2", "tool": "search_docs", "args": {"query": "Q3"}}


def test_references_are_checked_against_the_tool_output() -> None:
    tools = _catalog()
    ok = _plan([CALCULATE, SEARCH_STEP], answer="{{s1.value}} and {{s2.matches[0].text}}")
    assert validate_plan(ok, tools) == []

    bad = _plan(
        [CALCULATE, {**SEARCH_STEP, "args": {"query": "{{s1.result}}"}, "depends_on": ["s1"]}],
        answer="{{s1.value}} {{s2.matches[0].page}} {{s7}}",
    )
    errors = " | ".join(validate_plan(bad, tools))
    assert "step s2: {{s1.result}}: calculator output has no such field (fields: text, value)" in (
        errors
    )
    assert "the answer uses {{s7}} but no step has that id" in errors
    assert "the answer: {{s2.matches[0].page}}: search_docs output has no such field" in errors

    assert validate_plan(_plan([CALCULATE], answer="  "), tools) == [
        "the answer template is empty: write the answer, or leave it out"
    ]


def test_a_solve_round_may_only_answer() -> None:
    tools = _catalog()
    answer_only = _plan([], answer="It is {{s1.value}}.")
    assert validate_plan(answer_only, tools, done={"s1"}) == []
    assert validate_plan(_plan([]), tools) == ["the plan has no steps and no answer"]
    schema = plan_output_schema(list(tools.values()), [], done={"s1"})
    assert schema["properties"]["steps"]["minItems"] == 0
    assert plan_output_schema(list(tools.values()), [])["properties"]["steps"]["minItems"] == 1


def test_a_written_answer_costs_no_answer_model() -> None:
    tools = _catalog()
    request = PlanRequest(task="t", tools=list(tools.values()), remaining_usd=1, max_usd=1)
    steps = [{"id": "s1", "tool": "calculator", "args": {"expression": "1+1"}}]
    templated = cost_plan(_Draft(steps=steps, answer="{{s1.value}}"), request, 0.01, "m")  # type: ignore[arg-type]
    assert templated.synthesis_estimate_usd == 0 and templated.answer == "{{s1.value}}"
    reasoned = cost_plan(_Draft(steps=steps), request, 0.01, "m")  # type: ignore[arg-type]
    assert reasoned.synthesis_estimate_usd == 0.01 and reasoned.answer is None
    gathering = cost_plan(_Draft(steps=steps, answer="x", then="plan"), request, 0.01, "m")  # type: ignore[arg-type]
    assert gathering.synthesis_estimate_usd == 0.01  # the answer is still to be written


def test_a_dependency_on_a_step_no_plan_has_is_dropped_not_fatal() -> None:
    """The 1.5B model's plan for `make run`'s task made s2 wait on an "s3" it never planned;
    that plan was refused and the re-plan lost the calculator step."""
    tools = _catalog()
    request = PlanRequest(task="t", tools=list(tools.values()), remaining_usd=1, max_usd=1)
    steps = [
        {"id": "s1", "tool": "calculator", "args": {"expression": "17*7*24"}},
        {"id": "s2", "tool": "search_docs", "args": {"query": "deploy"}, "depends_on": ["s3"]},
        {"id": "s4", "tool": "calculator", "args": {"expression": "1"}, "depends_on": ["s1"]},
    ]
    plan = cost_plan(_Draft(steps=steps), request, 0.01, "m")  # type: ignore[arg-type]
    assert [s.depends_on for s in plan.steps] == [[], [], ["s1"]]
    assert validate_plan(plan, tools) == []


# --- what the planner is offered ---------------------------------------------------------


def test_bounded_integers_become_enums_in_the_grammar() -> None:
    schema = grammar_schema(_catalog()["search_docs"].input_schema)
    assert schema["properties"]["limit"] == {"enum": list(range(1, 21))}
    wide = {"type": "integer", "minimum": 0, "maximum": 10_000}
    assert grammar_schema(wide) == wide  # too many values to list: the validator checks it


def test_the_catalog_offered_fits_the_task() -> None:
    tools = list(_catalog().values())
    assert len(tools) > planning.MAX_OFFERED_TOOLS
    task = "Compute 17*7*24 and say what handbook.md says about deployments"
    offered = {t.name for t in offered_tools(task, tools)}
    assert len(offered) == planning.MAX_OFFERED_TOOLS
    assert {"calculator", "read_file", "search_docs"} <= offered
    four = tools[:4]
    assert offered_tools(task, four) == four  # a small catalog is offered whole


def test_the_demonstrations_have_nothing_a_real_task_can_use() -> None:
    shown = " ".join(m.content for m in planning.demonstrations())
    tasks = " ".join(t.task for t in TASKS)
    for value in ("13**3", "2+95", "planets.md", "Mars", "moons"):
        assert value in shown and value not in tasks


def test_a_solve_round_prompt_shows_the_results_and_asks_for_the_rest() -> None:
    tools = list(_catalog().values())
    request = PlanRequest(
        task="How many new customers in Q2 and Q3 together (report.md)?",
        tools=tools,
        remaining_usd=1,
        max_usd=1,
        completed=[SEARCH],
    )
    prompt = planning_prompt(request, ["report.md"])[-1].content
    assert planning.DONE in prompt and "| Q3 | 23 |" in prompt
    assert prompt.endswith(planning.SOLVE)


# --- whole tasks -------------------------------------------------------------------------


async def test_a_mechanical_task_costs_one_model_call(stack: Stack) -> None:
    task = unique("Compute 17*7*24 and say when deployments happen")
    plan = {
        "steps": [
            {"id": "s1", "tool": "calculator", "args": {"expression": "17*7*24"}},
            {"id": "s2", "tool": "search_docs", "args": {"query": "deployments", "limit": 1}},
        ],
        "answer": "17*7*24 = {{s1.value}} hours. Handbook: {{s2.matches[0].text}}",
    }
    stack.model.script(task, "plan", json.dumps(plan))
    result, scheduled = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    assert result.answer.startswith("17*7*24 = 2856 hours. Handbook: ")
    assert "deploy" in result.answer.lower()
    assert result.llm_calls == 1
    assert [e.role for e in result.ledger.entries if e.kind == "model"] == ["planner"]
    assert "synthesize" not in scheduled


async def test_gather_then_solve_plans_with_what_was_read(stack: Stack) -> None:
    task = unique("How many new customers did Q1 to Q3 bring, per report.md?")
    gather = {
        "steps": [{"id": "s1", "tool": "read_file", "args": {"path": "report.md"}}],
        "then": "plan",
    }
    solve = {
        "steps": [{"id": "s2", "tool": "calculator", "args": {"expression": "14+19+23"}}],
        "answer": "{{s2.value}} new customers",
    }
    stack.model.script(task, "plan", json.dumps(gather), json.dumps(solve))
    result, scheduled = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    assert result.answer == "56 new customers"
    assert result.llm_calls == 2 and result.replans == 0
    planned = [a for a in scheduled if a in ("plan", "synthesize") or a.startswith("tool.")]
    assert planned == ["plan", "tool.read_file", "plan", "tool.calculator"]
    assert result.plan is not None and result.plan.version == 2


async def test_solve_rounds_are_bounded(stack: Stack) -> None:
    task = unique("Keep computing forever")
    plans = [
        json.dumps(
            {
                "steps": [{"id": f"s{n}", "tool": "calculator", "args": {"expression": f"{n}*7"}}],
                "then": "plan",
            }
        )
        for n in range(1, 6)
    ]
    stack.model.script(task, "plan", *plans)
    result, scheduled = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    # the first plan and two solve rounds; then the answer model writes the answer
    assert scheduled.count("plan") == 3 and scheduled.count("synthesize") == 1


async def test_a_solve_round_that_only_repeats_answers(stack: Stack) -> None:
    task = unique("Read the handbook, then read it again")
    read = {"id": "s1", "tool": "read_file", "args": {"path": "handbook.md"}}
    again = {"steps": [{**read, "id": "s2"}], "then": "plan"}
    stack.model.script(
        task, "plan", json.dumps({"steps": [read], "then": "plan"}), json.dumps(again)
    )
    result, scheduled = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    # the second round asked for nothing new: no third plan, and the file was read once
    assert scheduled.count("plan") == 2 and scheduled.count("tool.read_file") == 1
    assert result.plan is not None and result.plan.then == "answer"


def test_a_broken_written_answer_is_named() -> None:
    request = PlanRequest(
        task="Compute 6*7", tools=list(_catalog().values()), remaining_usd=1, max_usd=1
    )
    draft = _Draft.model_validate(
        {
            "steps": [{"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}],
            "answer": "{{s1.total}} or {{s4}}, about 41",
        }
    )
    problems = " | ".join(planning.answer_problems(draft, request))
    assert "{{s1.total}}: calculator output has no such field" in problems
    assert "the answer uses {{s4}} but no step has that id" in problems
    good = draft.model_copy(update={"answer": "6*7 = {{s1.value}}"})
    assert planning.answer_problems(good, request) == []


async def test_a_broken_written_answer_leaves_the_answer_to_the_model(stack: Stack) -> None:
    task = unique("Compute 6*7 with a broken answer")
    calc = {"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}
    stack.model.script(task, "plan", json.dumps({"steps": [calc], "answer": "{{s1.total}}"}))
    result, scheduled = await run_task(stack, TaskRequest(task=task))
    # the steps were sound: they ran, and the answer model wrote the answer from them
    assert result.status == TaskStatus.COMPLETED and result.replans == 0
    assert scheduled.count("synthesize") == 1 and "42" in result.answer


async def test_no_plan_asks_a_person_unless_someone_answers(stack: Stack) -> None:
    task = unique("Ask me a number (nobody is there)")
    ask = {"id": "s1", "tool": "ask_human", "args": {"question": "Which number?"}}
    stack.model.script(task, "plan", json.dumps({"steps": [ask]}))
    result, _ = await run_task(stack, TaskRequest(task=task, max_replans=0))
    assert result.status == TaskStatus.FAILED
    assert "unknown or disallowed tool 'ask_human'" in (result.error or "")
    assert HumanPolicy().questions is False
