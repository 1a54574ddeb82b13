"""The planner on the real dev server: lookahead branches, parallel steps, cost-aware plans,
re-planning of the remaining work, escalation to the large model, and the ReAct baseline."""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType

from keel.client import start_task
from keel.contracts import Budget, StepStatus, TaskRequest, TaskResult, TaskStatus
from keel.testing import Stack, scripted_plan
from tests.conftest import FLAKY_ATTEMPTS, run_task, unique


def _by_id(result: TaskResult) -> dict[str, StepStatus]:
    return {s.step_id: s.status for s in result.steps}


async def test_lookahead_runs_one_branch_and_skips_the_other(stack: Stack) -> None:
    # The article's "search; if found use it, otherwise search elsewhere", decided up front.
    task = unique("What do the docs say about rollbacks")
    stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "search_docs", "args": {"query": "rollback"}},
            {
                "id": "s2",
                "tool": "read_file",
                "args": {"path": "handbook.md"},
                "depends_on": ["s1"],
                "when": "len(s1.matches) > 0 and s1.matches[0].path == 'handbook.md'",
            },
            {
                "id": "s3",
                "tool": "ask_reasoner",
                "args": {"question": "How are rollbacks usually done?"},
                "depends_on": ["s1"],
                "when": "len(s1.matches) == 0",
            },
            # depends on the skipped branch: skipped too, never run
            {
                "id": "s4",
                "tool": "calculator",
                "args": {"expression": "1+1"},
                "depends_on": ["s3"],
            },
        ),
    )
    result, scheduled = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    assert _by_id(result) == {
        "s1": StepStatus.SUCCEEDED,
        "s2": StepStatus.SUCCEEDED,
        "s3": StepStatus.SKIPPED,
        "s4": StepStatus.SKIPPED,
    }
    assert "tool.ask_reasoner" not in scheduled and "tool.calculator" not in scheduled
    assert result.llm_calls == 2  # one plan, one answer: no model call per step
    assert "deploy rollback" in result.answer
    skipped = next(s for s in result.steps if s.step_id == "s3")
    assert "is false" in (skipped.error or "")


async def test_independent_steps_run_in_parallel(stack: Stack) -> None:
    task = unique("Three independent lookups")
    stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "read_file", "args": {"path": "handbook.md"}},
            {"id": "s2", "tool": "read_file", "args": {"path": "report.md"}},
            {"id": "s3", "tool": "calculator", "args": {"expression": "2**10"}},
            {
                "id": "s4",
                "tool": "calculator",
                "args": {"expression": "{{s3}} + 1"},
                "depends_on": ["s3"],
            },
        ),
    )
    handle = await start_task(stack.client, TaskRequest(task=task))
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    assert next(s for s in result.steps if s.step_id == "s4").output == {
        "value": 1025,
        "text": "1025",
    }

    # All three independent steps were scheduled before any of them completed.
    events = (await handle.fetch_history()).events
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    first_tool_done = min(
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and scheduled[e.activity_task_completed_event_attributes.scheduled_event_id].startswith(
            "tool."
        )
    )
    before = [n for i, n in scheduled.items() if n.startswith("tool.") and i < first_tool_done]
    assert sorted(before) == ["tool.calculator", "tool.read_file", "tool.read_file"]


async def test_a_broken_condition_fails_the_step_and_is_replanned(stack: Stack) -> None:
    task = unique("Compare text with a number")
    stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "read_file", "args": {"path": "report.md"}},
            {
                "id": "s2",
                "tool": "calculator",
                "args": {"expression": "1+1"},
                "depends_on": ["s1"],
                "when": "s1.text > 3",
            },
        ),
        scripted_plan({"id": "s2", "tool": "calculator", "args": {"expression": "2+2"}}),
    )
    result, scheduled = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    assert result.replans == 1
    broken = next(s for s in result.steps if s.plan_version == 1 and s.step_id == "s2")
    assert broken.status == StepStatus.FAILED and "cannot compare" in (broken.error or "")
    assert scheduled.count("tool.read_file") == 1  # s1 is done and stays done


async def test_a_tight_budget_gets_a_cheaper_plan_for_the_same_task(stack: Stack) -> None:
    task = unique("Explain why production deployments need a reviewer")
    rich, _ = await run_task(stack, TaskRequest(task=task, budget=Budget(usd=0.05)))
    tight, _ = await run_task(stack, TaskRequest(task=task, budget=Budget(usd=0.004)))

    assert rich.status == tight.status == TaskStatus.COMPLETED
    assert rich.plan is not None and tight.plan is not None
    assert [s.tool for s in rich.plan.steps] == ["ask_reasoner"]  # the strong, paid tool
    assert [s.tool for s in tight.plan.steps] == ["search_docs"]  # the free one
    assert tight.plan.expected_cost_usd < rich.plan.expected_cost_usd
    assert tight.ledger.total_usd <= 0.004
    # Every step carries its expected cost and latency from the tool catalog.
    assert rich.plan.steps[0].expected_cost_usd > 0
    assert rich.plan.expected_latency_ms >= tight.plan.expected_latency_ms


async def test_a_transient_tool_failure_is_retried_without_replanning(stack: Stack) -> None:
    task = unique("Call the unreliable service once")
    key = unique("transient")
    stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "flaky", "args": {"key": key, "failures": 1}}),
    )
    result, scheduled = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    assert result.replans == 0
    assert FLAKY_ATTEMPTS[key] == 2  # Temporal retried the activity; the planner never knew
    assert scheduled.count("plan") == 1


async def test_a_permanent_failure_replans_only_the_remaining_work(stack: Stack) -> None:
    task = unique("Compute 6*7 and call the service")
    key = unique("permanent")
    stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}},
            {"id": "s2", "tool": "flaky", "args": {"key": key, "failures": 99}},
        ),
        # The re-plan builds on the finished s1 and repeats it once more by mistake: the
        # repeat is answered from the earlier result, not run again.
        scripted_plan(
            {"id": "s3", "tool": "calculator", "args": {"expression": "6*7"}},
            {
                "id": "s4",
                "tool": "calculator",
                "args": {"expression": "{{s1}} + 1"},
                "depends_on": ["s1"],
            },
        ),
    )
    result, scheduled = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    assert result.replans == 1
    assert FLAKY_ATTEMPTS[key] == 3  # all its attempts were used before giving up
    assert scheduled.count("tool.calculator") == 2  # 6*7 once, 42+1 once
    s4 = next(s for s in result.steps if s.step_id == "s4")
    assert s4.output is not None and s4.output["value"] == 43
    s3 = next(s for s in result.steps if s.step_id == "s3")
    assert s3.status == StepStatus.SUCCEEDED and s3.output is not None
    assert s3.output["value"] == 42


async def test_an_invalid_small_model_plan_escalates_to_the_large_model(stack: Stack) -> None:
    task = unique("Plan badly first")
    stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "calculator", "args": {"expression": 7}}
        ),  # not a string
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "7*6"}}),
    )
    result, _ = await run_task(stack, TaskRequest(task=task))

    assert result.status == TaskStatus.COMPLETED
    plans = [
        e
        for e in result.ledger.entries
        if e.kind == "model" and e.role in ("planner", "escalation")
    ]
    assert [(e.role, e.name) for e in plans] == [
        ("planner", "scripted"),
        ("escalation", "scripted-large"),
    ]
    assert result.plan is not None and result.plan.model == "scripted-large"
    assert plans[1].usd > 0


async def test_react_baseline_makes_one_model_call_per_step(stack: Stack) -> None:
    task = unique("Compute 12*12 and 7*7 and read report.md")
    plan_ahead, _ = await run_task(stack, TaskRequest(task=task))
    react, scheduled = await run_task(stack, TaskRequest(task=task, strategy="react"))

    assert plan_ahead.status == react.status == TaskStatus.COMPLETED, react.error
    for result in (plan_ahead, react):
        assert "144" in result.answer and "49" in result.answer
        assert "Q3" in result.answer
    assert plan_ahead.llm_calls == 2  # plan + answer
    assert react.llm_calls == 4  # three actions + the answer
    assert scheduled.count("react_step") == 4 and "plan" not in scheduled
    assert react.ledger.total_tokens > plan_ahead.ledger.total_tokens
    assert react.plan is None
