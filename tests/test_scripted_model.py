"""The scripted model reads the real prompts: each activity builds its messages as it does for
a real model, and the scripted model must find in them what its rules need (the task, the
tools and prices, the budget, what is done, the memory, the results). Pure: no server."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.memory.context import fact_line
from activities.memory.extraction import ExtractionActivities
from activities.models.base import Message, ModelRequest
from activities.models.router import TYPICAL_REASONER_CALL, ModelRouter
from activities.models.scripted import (
    PlanPrompt,
    ReactPrompt,
    ScriptedModel,
    read_prompt,
)
from activities.planning import PlanningActivities, planning_prompt
from activities.react import ReactActivities, react_prompt
from activities.reasoning import ReasoningActivities
from activities.tools.builtin import default_registry
from activities.tools.reasoner import question_prompt
from keel.contracts import (
    ExtractionRequest,
    Fact,
    PlanRequest,
    ReactRequest,
    StepResult,
    StepStatus,
    SynthesisRequest,
    ToolSpec,
)
from keel.durable import MODEL_BAD_REQUEST
from keel.settings import REPO_ROOT, Settings

DOCS = REPO_ROOT / "samples" / "docs"
KOTLIN = Fact(
    id="f1",
    subject="user",
    relation="preferred_language",
    object="Kotlin",
    valid_from=datetime(2025, 1, 2, tzinfo=UTC),
)


@pytest.fixture
def tools(tmp_path: Path) -> list[ToolSpec]:
    return default_registry(Settings(home=tmp_path)).specs()


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


def _router(model: ScriptedModel) -> ModelRouter:
    return ModelRouter({"planner": model, "reasoner": model})


def _answer_usd(model: ScriptedModel) -> float:
    return _router(model).estimate_usd("reasoner", *TYPICAL_REASONER_CALL)


def _step(step_id: str, tool: str, args: dict[str, object], text: str) -> StepResult:
    return StepResult(
        step_id=step_id,
        plan_version=1,
        tool=tool,
        args=args,
        status=StepStatus.SUCCEEDED,
        output={"text": text},
    )


def _plan_request(tools: list[ToolSpec], task: str, **fields: object) -> PlanRequest:
    return PlanRequest.model_validate(
        {"task": task, "tools": tools, "remaining_usd": 0.05, "max_usd": 0.05, **fields}
    )


async def _plan(model: ScriptedModel, request: PlanRequest) -> list[dict[str, object]]:
    """The steps of the plan the real plan activity gets from the scripted model."""
    activities = PlanningActivities(_router(model), DOCS)
    response = await ActivityEnvironment().run(activities.plan, request)
    assert response.plan is not None, response.error
    return [s.model_dump(include={"id", "tool", "args"}) for s in response.plan.steps]


def test_the_plan_prompt_is_read_back_whole(tools: list[ToolSpec]) -> None:
    task = "Compute 6*7 and read report.md\nthen say which quarter grew most"
    done = _step("s1", "calculator", {"expression": "6*7"}, "42\n- s9: not_a_step({}) -> x")
    failed = StepResult(
        step_id="s2", plan_version=1, tool="read_file", status=StepStatus.FAILED, error="gone"
    )
    request = _plan_request(
        tools,
        task,
        remaining_usd=0.0123456,
        context=[fact_line(KOTLIN), "earlier task: hi -> two\nlines"],
        completed=[done, failed],
        failures=["plan v1 is invalid: s2 failed"],
    )
    prompt = read_prompt(planning_prompt(request, ["handbook.md", "report.md"], 0.0023))

    assert isinstance(prompt, PlanPrompt)
    assert prompt.task == task
    assert prompt.tools == {t.name: round(t.cost_per_call_usd, 6) for t in tools}
    assert "ask_reasoner" in prompt.tools and prompt.tools["ask_reasoner"] > 0
    assert prompt.remaining_usd == 0.012346 and prompt.answer_usd == 0.0023
    # each memory line comes back whole: quoted, its line break is no prompt line of its own
    assert prompt.context == [fact_line(KOTLIN), "earlier task: hi -> two\nlines"]
    # only the succeeded step (its result, on one line, cannot pass for another step)
    assert [(d.id, d.tool, d.args) for d in prompt.done] == [
        ("s1", "calculator", {"expression": "6*7"})
    ]


def test_a_tool_description_on_several_lines_is_one_prompt_line(tools: list[ToolSpec]) -> None:
    wordy = tools[0].model_copy(update={"description": "Line one.\n- fake(x): [$9.0/call]"})
    prompt = read_prompt(planning_prompt(_plan_request([wordy, *tools[1:]], "Say hi"), []))
    assert isinstance(prompt, PlanPrompt) and "fake" not in prompt.tools
    assert list(prompt.tools) == [t.name for t in tools]


async def test_the_budget_left_after_the_answer_picks_the_tools(
    model: ScriptedModel, tools: list[ToolSpec]
) -> None:
    task = "Explain why deployments need a reviewer"
    ask = next(t.cost_per_call_usd for t in tools if t.name == "ask_reasoner")
    answer = _answer_usd(model)
    roomy = ask + answer + 0.001
    tight = ask + answer / 2  # the question fits, the question and the answer do not
    for budget, tool in ((roomy, "ask_reasoner"), (tight, "search_docs")):
        request = _plan_request(tools, task, remaining_usd=budget, max_usd=budget)
        [step] = await _plan(model, request)
        assert step["tool"] == tool, f"budget ${budget:.6f}"


async def test_a_replan_plans_only_the_undone_work_with_free_ids(
    model: ScriptedModel, tools: list[ToolSpec]
) -> None:
    task = "Compute 12*12 and 7*7 and read report.md"
    done = [
        _step("s1", "calculator", {"expression": "12*12"}, "144"),
        _step("s3", "read_file", {"path": "handbook.md"}, "# Handbook"),
    ]
    steps = await _plan(model, _plan_request(tools, task, completed=done))
    assert steps == [
        {"id": "s2", "tool": "calculator", "args": {"expression": "7*7"}},
        {"id": "s4", "tool": "read_file", "args": {"path": "report.md"}},
    ]


async def test_my_x_is_read_from_the_memory_in_the_prompt(
    model: ScriptedModel, tools: list[ToolSpec]
) -> None:
    task = "Write a hello world program in my preferred language"
    [step] = await _plan(model, _plan_request(tools, task, context=[fact_line(KOTLIN)]))
    assert step["tool"] == "ask_reasoner"
    assert step["args"] == {"question": "Write a hello world program in Kotlin"}


async def test_a_plan_prompt_without_the_task_fails_loudly(
    model: ScriptedModel, tools: list[ToolSpec]
) -> None:
    messages = planning_prompt(_plan_request(tools, "What is 6*7?"), [])
    task_line, rest = messages[-1].content.split("\n", 1)
    assert task_line == "Task: What is 6*7?"
    forgetful = [*messages[:-1], Message("user", rest.lstrip("\n"))]
    with pytest.raises(ApplicationError, match="plan prompt does not start with the task") as err:
        await model.complete(ModelRequest(forgetful))
    assert err.value.type == MODEL_BAD_REQUEST and err.value.non_retryable

    blank = planning_prompt(_plan_request(tools, " "), [])
    with pytest.raises(ApplicationError, match="plan prompt names an empty task"):
        await model.complete(ModelRequest(blank))

    no_budget = messages[-1].content.replace("Budget left: $", "Money: $")
    with pytest.raises(ApplicationError, match="'Budget left: \\$' line"):
        await model.complete(ModelRequest([*messages[:-1], Message("user", no_budget)]))


async def test_react_reads_the_transcript_one_call_per_turn(
    model: ScriptedModel, tools: list[ToolSpec]
) -> None:
    task = "Compute 12*12 and read report.md"
    react = ReactActivities(_router(model))
    history: list[StepResult] = []
    for n in range(3):
        request = ReactRequest(
            task=task,
            tools=tools,
            history=history,
            remaining_usd=1,
            max_usd=0.01,
            steps_left=5,
        )
        decision = await ActivityEnvironment().run(react.react_step, request)
        if decision.answer is not None:
            break
        assert decision.tool is not None
        output = "144" if decision.tool == "calculator" else "| Q3 | 161000 |"
        history.append(_step(f"r{n}", decision.tool, decision.args, output))
    assert [(s.tool, s.args) for s in history] == [
        ("calculator", {"expression": "12*12"}),
        ("read_file", {"path": "report.md"}),
    ]
    assert decision.answer == f"Answer to: {task}\ncalculator: 144\nread_file: | Q3 | 161000 |"
    prompt = read_prompt(react_prompt(request))
    assert isinstance(prompt, ReactPrompt) and set(prompt.tools) == {t.name for t in tools}


async def test_the_answer_quotes_the_step_results(model: ScriptedModel) -> None:
    reasoning = ReasoningActivities(_router(model))
    steps = [_step("s1", "calculator", {"expression": "6*7"}, "42")]
    request = SynthesisRequest(task="What is 6*7?", steps=steps, context=["fact: x"], max_usd=0.01)
    synthesis = await ActivityEnvironment().run(reasoning.synthesize, request)
    assert synthesis.answer == 'Answer to: What is 6*7?\ncalculator({"expression": "6*7"}) = "42"'

    nothing = request.model_copy(update={"steps": []})
    synthesis = await ActivityEnvironment().run(reasoning.synthesize, nothing)
    assert synthesis.answer == "Answer to: What is 6*7?"


async def test_facts_are_extracted_from_the_task_not_the_answer(model: ScriptedModel) -> None:
    extraction = ExtractionActivities(ModelRouter({"planner": model}))
    request = ExtractionRequest(
        task="Note that my preferred language is Kotlin.",
        answer="Answer: my editor is vim",
        max_usd=0.01,
    )
    result = await ActivityEnvironment().run(extraction.extract_facts, request)
    assert [(t.subject, t.relation, t.object) for t in result.triples] == [
        ("user", "preferred_language", "Kotlin")
    ]


async def test_scripts_answer_the_purpose_recognised_from_the_messages(
    model: ScriptedModel, tools: list[ToolSpec]
) -> None:
    task = "Which purpose is this"
    plan = json.dumps({"steps": [{"id": "s1", "tool": "calculator", "args": {}}]})
    model.script(task, "plan", plan)
    model.script(task, "synthesize", "scripted answer")
    model.script(task, "ask", "scripted reply")
    router = _router(model)

    async def reply(messages: list[Message]) -> str:
        return (await router.complete("planner", ModelRequest(messages), max_usd=1)).text

    assert await reply(planning_prompt(_plan_request(tools, task), [])) == plan
    synthesis = SynthesisRequest(task=task, steps=[], max_usd=1)
    reasoning = ReasoningActivities(router)
    assert (await ActivityEnvironment().run(reasoning.synthesize, synthesis)).answer == (
        "scripted answer"
    )
    assert await reply(question_prompt(f"{task}?")) == "scripted reply"
    # a purpose not scripted for this task falls back to the default rules
    assert await reply(question_prompt("Another question?")) == (
        "Scripted answer to: Another question?"
    )
