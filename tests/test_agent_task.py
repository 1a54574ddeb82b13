"""AgentTask end to end on the real dev server with the scripted model and the real tools."""

from __future__ import annotations

import math

from activities.models.prices import price_of
from keel import _search_attributes as sa
from keel.client import new_workflow_id, start_task
from keel.contracts import Budget, StepStatus, TaskProgress, TaskRequest, TaskStatus
from keel.testing import Stack, scripted_plan
from tests.conftest import run_task, unique


async def test_task_completes_and_ledger_matches_bookings(stack: Stack) -> None:
    task = unique("What is 17*23 and what does handbook.md say?")
    handle = await start_task(stack.client, TaskRequest(task=task, user_id="alice"))
    result = await handle.result()

    assert result.status == TaskStatus.COMPLETED
    assert "391" in result.answer
    assert "Tuesdays and Thursdays" in result.answer  # read from the task's copy of the docs
    assert {s.tool for s in result.steps} == {"calculator", "read_file"}
    assert all(s.status == StepStatus.SUCCEEDED for s in result.steps)

    # Every model call is priced from the price table by its own token counts ...
    models = [e for e in result.ledger.entries if e.kind == "model"]
    assert [e.role for e in models] == ["planner", "reasoner"]  # nothing personal to extract
    for entry in models:
        expected = price_of(entry.name).estimate(entry.input_tokens, entry.output_tokens)
        assert math.isclose(entry.usd, expected, rel_tol=1e-9)
    # ... and the ledger total is what the steps and model calls booked, nothing else.
    booked = sum(e.usd for e in models) + sum(s.cost_usd for s in result.steps)
    assert math.isclose(result.ledger.total_usd, booked, rel_tol=1e-9)
    assert result.llm_calls == 2
    assert result.ledger.total_usd <= result.ledger.budget_usd

    # The queries and search attributes agree with the result.
    progress = await handle.query("status", result_type=TaskProgress)
    assert progress.status == TaskStatus.COMPLETED
    assert progress.steps_done == 2
    description = await handle.describe()
    attrs = description.typed_search_attributes
    assert attrs.get(sa.STATUS) == "completed"
    assert attrs.get(sa.USER) == "alice"
    assert math.isclose(attrs.get(sa.COST_USD) or 0.0, result.ledger.total_usd, rel_tol=1e-9)
    assert await description.memo() == {"task": task, "budget_usd": 0.05, "user": "alice"}


async def test_model_backed_tool_is_booked_as_model_calls(stack: Stack) -> None:
    task = unique("Explain why the sky is blue")  # no numbers, no files: ask_reasoner
    result = await (await start_task(stack.client, TaskRequest(task=task))).result()

    assert result.status == TaskStatus.COMPLETED
    assert [s.tool for s in result.steps] == ["ask_reasoner"]
    step_models = [e for e in result.ledger.entries if e.kind == "model" and e.step_id == "s1"]
    assert len(step_models) == 1 and step_models[0].role == "reasoner"
    assert math.isclose(result.steps[0].cost_usd, step_models[0].usd, rel_tol=1e-9)
    assert result.llm_calls == 3  # plan, ask_reasoner, synthesize


async def test_failing_tool_triggers_replan_and_task_completes(stack: Stack) -> None:
    task = unique("Summarise the handbook")
    stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "read_file", "args": {"path": "missing.md"}}),
        scripted_plan({"id": "s1", "tool": "read_file", "args": {"path": "handbook.md"}}),
    )
    result = await (await start_task(stack.client, TaskRequest(task=task))).result()

    assert result.status == TaskStatus.COMPLETED
    assert result.replans == 1
    failed = [s for s in result.steps if s.status == StepStatus.FAILED]
    assert len(failed) == 1 and failed[0].plan_version == 1
    assert "no file 'missing.md'" in (failed[0].error or "")
    succeeded = [s for s in result.steps if s.status == StepStatus.SUCCEEDED]
    assert succeeded[0].plan_version == 2
    assert "Deployments" in result.answer


async def test_replans_are_bounded(stack: Stack) -> None:
    task = unique("Keep failing")
    stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "1/0"}}),
    )
    request = TaskRequest(task=task, max_replans=1)
    result = await (await start_task(stack.client, request)).result()

    assert result.status == TaskStatus.FAILED
    assert result.replans == 1
    assert [s.error for s in result.steps] == ["calculator: division by zero"] * 2


async def test_invalid_plan_is_never_executed(stack: Stack) -> None:
    task = unique("Use a tool that does not exist")
    stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "rm_rf", "args": {"path": "/"}}),
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "2+2"}}),
    )
    result = await (await start_task(stack.client, TaskRequest(task=task))).result()

    assert result.status == TaskStatus.COMPLETED
    assert result.replans == 1
    assert [s.tool for s in result.steps] == ["calculator"]


async def test_budget_too_small_for_the_plan(stack: Stack) -> None:
    # The planning call fits; the plan (an ask_reasoner step plus the answer) does not.
    task = unique("Explain the theory of relativity")
    request = TaskRequest(task=task, budget=Budget(usd=0.002), max_replans=0)
    result = await (await start_task(stack.client, request)).result()

    assert result.status == TaskStatus.BUDGET_EXHAUSTED
    assert result.steps == []  # nothing was executed
    assert result.ledger.total_usd <= request.budget.usd
    assert "only $" in (result.error or "")


async def test_budget_too_small_to_plan_at_all(stack: Stack) -> None:
    request = TaskRequest(task=unique("What is 2+2?"), budget=Budget(usd=0.00001))
    result = await (await start_task(stack.client, request)).result()

    assert result.status == TaskStatus.BUDGET_EXHAUSTED
    assert result.ledger.total_usd == 0
    assert result.llm_calls == 0


async def test_token_budget_is_respected(stack: Stack) -> None:
    request = TaskRequest(task=unique("What is 6*7?"), budget=Budget(usd=1, tokens=400))
    result = await (await start_task(stack.client, request)).result()

    assert result.ledger.total_tokens <= 400
    assert result.status in (TaskStatus.COMPLETED, TaskStatus.BUDGET_EXHAUSTED)


async def test_workflow_id_is_returned(stack: Stack) -> None:
    workflow_id = new_workflow_id()
    handle = await start_task(
        stack.client, TaskRequest(task=unique("What is 3+4?")), workflow_id=workflow_id
    )
    assert (await handle.result()).workflow_id == workflow_id


async def test_a_step_after_a_reused_one_runs_though_nothing_else_is_running(
    stack: Stack,
) -> None:
    # v2 repeats v1's finished calculation (reused, no call) and builds on it: with no call
    # running, the dependant must still start (it used to be dropped and the task "completed")
    task = unique("Compute 6*7, read missing.md, then add one")
    stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}},
            {"id": "s2", "tool": "read_file", "args": {"path": "missing.md"}},
        ),
        scripted_plan(
            {"id": "s3", "tool": "calculator", "args": {"expression": "6*7"}},
            {
                "id": "s4",
                "tool": "calculator",
                "args": {"expression": "{{s3}} + 1"},
                "depends_on": ["s3"],
            },
        ),
    )
    result = await (await start_task(stack.client, TaskRequest(task=task))).result()

    assert result.status == TaskStatus.COMPLETED, result.error
    by_id = {s.step_id: s for s in result.steps if s.plan_version == 2}
    assert by_id["s3"].status == StepStatus.SUCCEEDED
    calls = [e.step_id for e in result.ledger.entries if e.kind == "tool"]
    assert calls.count("s1") == 1 and "s3" not in calls  # s3 reused s1's result, free
    assert by_id["s4"].status == StepStatus.SUCCEEDED
    assert by_id["s4"].output is not None and by_id["s4"].output["value"] == 43


async def test_a_tasks_copy_of_the_files_is_deleted_when_it_ends(stack: Stack) -> None:
    reads = unique("What does handbook.md say about deployments?")
    stack.model.script(
        reads,
        "plan",
        scripted_plan({"id": "s1", "tool": "read_file", "args": {"path": "handbook.md"}}),
    )
    result, scheduled = await run_task(stack, TaskRequest(task=reads))
    assert (
        result.status == TaskStatus.COMPLETED
        and "Tuesdays" in (result.steps[0].output or {})["text"]
    )
    assert scheduled[-1] == "release_workspace"
    handle = stack.client.get_workflow_handle(result.workflow_id)
    events = (await handle.fetch_history()).events
    [released] = [
        e.activity_task_completed_event_attributes.result.payloads[0].data
        for e in events
        if e.HasField("activity_task_completed_event_attributes")
    ][-1:]
    assert released == b"true"  # the tools worker found the task's copy, and deleted it
    first_run = (await handle.describe()).raw_description.workflow_execution_info.first_run_id
    copy = stack.settings.workspaces_dir / f"{result.workflow_id}.{first_run}"
    assert not copy.exists() and stack.settings.workspaces_dir.is_dir()

    # a task that read no files has nothing to release: no call for it
    computes = unique("What is 6*7?")
    stack.model.script(
        computes,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
    )
    _, scheduled = await run_task(stack, TaskRequest(task=computes))
    assert "release_workspace" not in scheduled
