"""Sub-agents: a plan step delegates to a named sub-agent, run as a child AgentTask with its
own tools and a slice of the parent's budget, on the real dev server."""

from __future__ import annotations

import math

from temporalio.client import WorkflowExecutionStatus

from keel.client import start_task
from keel.contracts import Budget, StepStatus, SubAgent, TaskRequest, TaskResult, TaskStatus
from keel.testing import Stack, scripted_plan
from tests.conftest import unique


async def test_a_step_delegates_to_a_sub_agent_whose_spend_the_parent_books(
    stack: Stack,
) -> None:
    task = unique("Have the coder work out 6*7")
    sub_task = unique("compute 6*7")
    stack.model.script(
        task, "plan", scripted_plan({"id": "s1", "tool": "coder", "args": {"task": sub_task}})
    )
    stack.model.script(
        sub_task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
    )
    handle = await start_task(stack.client, TaskRequest(task=task, budget=Budget(usd=0.05)))
    result = await handle.result()

    assert result.status == TaskStatus.COMPLETED
    [step] = result.steps
    assert step.tool == "coder" and step.status == StepStatus.SUCCEEDED
    assert step.output is not None and step.output["status"] == "completed"
    assert "42" in step.output["answer"]

    child = stack.client.get_workflow_handle(f"{handle.id}.coder.v1.s1", result_type=TaskResult)
    described = await child.describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED
    assert described.parent_id == handle.id
    assert (await described.memo())["budget_usd"] == 0.01
    child_result = await child.result()
    assert [s.tool for s in child_result.steps] == ["calculator"]
    assert child_result.ledger.budget_usd == 0.01  # the coder's slice, not the parent's 0.05
    assert child_result.ledger.total_usd > 0

    # the parent's ledger holds the child's whole spend in one entry, and counts it
    [agent] = [e for e in result.ledger.entries if e.kind == "agent"]
    assert agent.name == "coder" and agent.step_id == "s1"
    assert math.isclose(agent.usd, child_result.ledger.total_usd, rel_tol=1e-9)
    assert math.isclose(step.cost_usd, agent.usd, rel_tol=1e-9)
    own = sum(e.usd for e in result.ledger.entries if e.kind != "agent")
    assert math.isclose(result.ledger.total_usd, own + agent.usd, rel_tol=1e-9)


async def test_a_sub_agent_only_has_its_own_tools(stack: Stack) -> None:
    task = unique("Have the reader fetch the handbook")
    sub_task = unique("read handbook.md")
    reader = SubAgent(name="reader", description="reads files", tools=["read_file"])
    stack.model.script(
        task, "plan", scripted_plan({"id": "s1", "tool": "reader", "args": {"task": sub_task}})
    )
    # the child's planner asks for a tool the reader does not have: its plan is refused
    stack.model.script(
        sub_task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "1+1"}}),
    )
    request = TaskRequest(task=task, subagents=[reader], max_replans=0)
    result = await (await start_task(stack.client, request)).result()

    [step] = result.steps
    assert step.status == StepStatus.FAILED
    assert step.error is not None
    assert step.error.startswith("sub-agent reader ended failed: plan v1 is invalid: step s1: ")
    assert "unknown or disallowed tool 'calculator' (available: read_file)" in step.error


async def test_sub_agents_are_not_offered_when_none_are_configured(stack: Stack) -> None:
    task = unique("Have the coder work out 2*2 (no sub-agents here)")
    stack.model.script(
        task, "plan", scripted_plan({"id": "s1", "tool": "coder", "args": {"task": "2*2"}})
    )
    request = TaskRequest(task=task, subagents=[], max_replans=0)
    result = await (await start_task(stack.client, request)).result()
    assert result.status == TaskStatus.FAILED
    assert result.error is not None and "unknown or disallowed tool 'coder'" in result.error
