"""Delegating a plan step to a sub-agent: a child AgentTask with its own tools and a slice
of the parent's budget, whose whole spend the parent books."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError

from keel import _search_attributes as sa
from keel import durable
from keel.contracts import (
    Budget,
    Ledger,
    PlanStep,
    StepResult,
    StepStatus,
    TaskRequest,
    TaskResult,
    TaskStatus,
    ToolSpec,
)
from workflows.state import TaskState


async def delegate(
    task: TaskState, version: int, step: PlanStep, spec: ToolSpec, call: dict[str, Any]
) -> StepResult:
    """Run the step as a child AgentTask of the named sub-agent, with the step's reservation
    (at most the agent's own budget) as its budget."""
    agent = task.subagents[spec.name]
    question = str(call["args"]["task"])
    tokens = task.book.remaining_tokens()
    budget = Budget(
        usd=min(agent.budget_usd, task.book.remaining_usd()),
        tokens=None if tokens is None else max(1, tokens),
    )
    child = TaskRequest(
        task=question,
        user_id=task.user_id,
        budget=budget,
        max_replans=task.request.max_replans,
        allowed_tools=agent.tools,
        human=task.request.human,
        subagents=[],
    )
    started = workflow.time()
    try:
        result: TaskResult = await workflow.execute_child_workflow(
            durable.AGENT_TASK,
            child,
            id=durable.child_task_id(workflow.info().workflow_id, agent.name, version, step.id),
            task_queue=workflow.info().task_queue,
            result_type=TaskResult,
            search_attributes=sa.initial(task.user_id),
            memo=sa.memo(child),
            static_summary=f"{agent.name}: {question[:100]} (budget ${budget.usd:g})",
        )
    except (ChildWorkflowError, asyncio.CancelledError) as err:
        # how much it spent is unknown: booked at its whole slice
        task.book.book_agent(agent.name, step.id, Ledger(), budget.usd, workflow.time() - started)
        if isinstance(err, asyncio.CancelledError):
            raise
        error = f"sub-agent {agent.name} failed: {err.cause or err}"
        task.event(f"{step.id}: {error}")
        return StepResult(**call, status=StepStatus.FAILED, error=error, cost_usd=budget.usd)
    task.book.book_agent(agent.name, step.id, result.ledger, None, workflow.time() - started)
    task.human.interventions += result.human_interventions
    spent = result.ledger.total_usd
    if result.status != TaskStatus.COMPLETED:
        error = f"sub-agent {agent.name} ended {result.status.value}: {result.error}"
        task.event(f"{step.id}: {error}")
        return StepResult(**call, status=StepStatus.FAILED, error=error, cost_usd=spent)
    task.event(f"{step.id}: {agent.name} answered (${spent:.4f})")
    return StepResult(
        **call,
        status=StepStatus.SUCCEEDED,
        output={"answer": result.answer, "status": result.status.value},
        cost_usd=spent,
        latency_ms=(workflow.time() - started) * 1000,
    )
