"""The ReAct baseline the article argues against: one model call per step, each re-reading
the whole history, until the model answers or runs out of steps. Kept to measure against."""

from __future__ import annotations

from temporalio.exceptions import ActivityError

from keel import durable
from keel._core.budget import BudgetExhausted, fits
from keel._plans import validate_plan
from keel.contracts import (
    Plan,
    PlanStep,
    ReactDecision,
    ReactRequest,
    StepResult,
    StepStatus,
    TaskStatus,
    ToolSpec,
)
from workflows import activity_options as options
from workflows.execution import run_step
from workflows.state import Outcome, TaskState


async def react(task: TaskState, context: list[str], tools: dict[str, ToolSpec]) -> Outcome:
    request = task.request
    history: list[StepResult] = []
    unusable = 0
    for turn in range(1, request.max_steps + 2):
        task.set_status(TaskStatus.PLANNING, f"react turn {turn}")
        try:
            remaining = task.book.require(f"react turn {turn}")
            decision = await _turn(task, context, tools, history, remaining)
        except BudgetExhausted as err:
            return Outcome(TaskStatus.BUDGET_EXHAUSTED, str(err))
        except ActivityError as err:
            return Outcome(TaskStatus.FAILED, f"the model failed: {err.cause or err}")
        task.book.book_model(decision.usage)
        if decision.error is not None:
            unusable += 1
            task.event(f"react turn {turn}: unusable output: {decision.error}")
            if unusable > request.max_replans:
                return Outcome(TaskStatus.FAILED, decision.error)
            continue
        if decision.tool is None:
            return Outcome(TaskStatus.COMPLETED, answer=(decision.answer or "").strip())
        if turn > request.max_steps:
            break
        step = PlanStep(id=f"r{turn}", tool=decision.tool, args=decision.args)
        problems = validate_plan(Plan(version=0, steps=[step]), tools)
        spec = tools.get(decision.tool)
        if problems or spec is None:
            result = StepResult(
                step_id=step.id,
                plan_version=0,
                tool=decision.tool,
                args=decision.args,
                status=StepStatus.FAILED,
                error="; ".join(problems),
            )
            task.event(f"{step.id}: refused: {result.error}")
        elif not fits(spec.cost_per_call_usd, task.book.remaining_usd()):
            task.book.refused("tool")
            return Outcome(TaskStatus.BUDGET_EXHAUSTED, f"step {step.id} does not fit the budget")
        else:
            task.set_status(TaskStatus.EXECUTING, f"react turn {turn}: {spec.name}")
            result = await run_step(task, 0, step, spec)
        history.append(result)
        task.record(result)
        task.publish_cost()
    return Outcome(TaskStatus.FAILED, f"no answer after {request.max_steps} tool calls")


async def _turn(
    task: TaskState,
    context: list[str],
    tools: dict[str, ToolSpec],
    history: list[StepResult],
    remaining: float,
) -> ReactDecision:
    return await options.call_model(
        durable.REACT_STEP,
        ReactRequest(
            task=task.request.task,
            context=context,
            tools=list(tools.values()),
            history=history,
            remaining_usd=remaining,
            max_usd=remaining,
            max_tokens=task.book.remaining_tokens(),
            steps_left=task.request.max_steps - len(history),
        ),
        ReactDecision,
        task.queues.planner,
        summary=f"react: next action after {len(history)} observations",
        refusal="the next turn does not fit",
        priority=task.priority,
    )
