"""Executing a plan: the scheduler (keel/_core/plan_run.py) decides which steps start; this
runs them as tool activities (or asks a person, or delegates), books what they cost and
continues as new mid-plan when Temporal suggests it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError

from keel import durable
from keel._core.budget import BudgetExhausted
from keel._core.cache_keys import tool_call_key
from keel._core.plan_run import PlanRun, Snapshot
from keel._plans import reads_as_prompt, resolve_args
from keel.contracts import (
    CacheStore,
    PendingKind,
    Plan,
    PlanStep,
    StepResult,
    StepStatus,
    ToolCall,
    ToolOutput,
    ToolSpec,
)
from workflows import activity_options as options
from workflows.memory_calls import cache_lookup, cache_store
from workflows.people import ask
from workflows.state import TaskState, every_arg, short_args
from workflows.subagents import delegate

ContinueAsNew = Callable[[Snapshot], NoReturn]
# Runs started before this patch start steps readied by a step that needed no call only
# after the next call returns (or never, when none is running): they replay that way.
READIED_NOW_PATCH = "keel-start-steps-readied-without-a-call"


# Runs started before this patch start every ready step at once.
PARALLEL_CAP_PATCH = "keel-cap-parallel-steps"


def _readied_now() -> bool:
    return workflow.patched(READIED_NOW_PATCH)


async def execute(
    task: TaskState,
    plan: Plan,
    tools: dict[str, ToolSpec],
    continue_as_new: ContinueAsNew,
    resumed: Snapshot | None = None,
) -> list[str]:
    """Run the plan, independent steps in parallel; returns the failures (empty on success).

    When Temporal suggests continuing as new, no new step starts, and once the running ones
    have settled the task continues as new where it stands (`continue_as_new`, which does
    not return)."""
    run = PlanRun.start(plan, task.outputs, resumed)
    running: dict[str, asyncio.Task[StepResult]] = {}
    try:
        while True:
            pause = run.should_pause(workflow.info().is_continue_as_new_suggested)
            if not pause:
                # one task's wide plan must not take every tool slot from other users' tasks
                room = (
                    task.request.max_parallel_steps - len(running)
                    if task.lean or workflow.patched(PARALLEL_CAP_PATCH)
                    else None
                )
                for step in run.advance(
                    tools, task.outputs, task.book, task.record, task.event, _readied_now, room
                ):
                    running[step.id] = asyncio.ensure_future(
                        run_step(task, plan.version, step, tools[step.tool])
                    )
            if not running:
                if pause and not run.blocked:
                    continue_as_new(run.snapshot())
                break
            if task.lean:  # while steps run; the status after the last one carries its cost
                task.publish_cost()
            await workflow.wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
            for step_id in [i for i, t in running.items() if t.done()]:  # replay-safe order
                result = running.pop(step_id).result()
                task.book.release(step_id)
                task.record(result)
                run.settle(result)
            if not task.lean:
                task.publish_cost()
    except (Exception, asyncio.CancelledError):  # not GeneratorExit: evicted from cache
        # cancelled, or a wait for a person gave up: stop the other steps (their tool
        # activities are cancelled and their reservations booked) before going on
        for pending in running.values():
            pending.cancel()
        for stopped in await asyncio.gather(*running.values(), return_exceptions=True):
            if isinstance(stopped, StepResult):
                task.record(stopped)
        for step_id in running:  # each stopped call booked its cost; nothing stays reserved
            task.book.release(step_id)
        raise
    if run.out_of_budget is not None and not run.failures:
        raise BudgetExhausted(run.out_of_budget)
    return run.failures


async def run_step(task: TaskState, version: int, step: PlanStep, spec: ToolSpec) -> StepResult:
    """One step: a question for a person, an approval first where the tool needs one, a
    sub-agent, or a tool activity (answered from the cache where the tool allows)."""
    # a model reads a sub-agent's task and ask_reasoner's question: results go in as data
    args = resolve_args(step.args, task.outputs, quote=reads_as_prompt(spec))
    task.event(f"{step.id}: {spec.name}({short_args(args)})")
    started = workflow.time()
    call: dict[str, Any] = {
        "step_id": step.id,
        "plan_version": version,
        "tool": spec.name,
        "args": args,
    }
    if spec.runs_as == "human":
        decision = await ask(task, PendingKind.QUESTION, step.id, str(args["question"]))
        return StepResult(**call, status=StepStatus.SUCCEEDED, output={"answer": decision.text})
    if spec.requires_approval:
        decision = await ask(
            task,
            PendingKind.APPROVAL,
            step.id,
            f"{spec.name}({every_arg(args)})",
            spec.cost_per_call_usd,
        )
        if not decision.approved:
            error = f"rejected by {decision.by or 'a person'}: {decision.text}"
            return StepResult(**call, status=StepStatus.FAILED, error=error)
        started = workflow.time()  # the wait for a person is not the tool's latency
    if spec.runs_as == "subagent":
        return await delegate(task, version, step, spec, call)
    cache_kind = durable.tool_activity(spec.name)
    if spec.cache is not None:
        hit = await cache_lookup(
            task, cache_kind, tool_call_key(args), spec.cache.per_user, spec.cache.semantic
        )
        if hit is not None:
            task.book.book_cached("tool", spec.name, step.id)
            return StepResult(
                **call,
                status=StepStatus.SUCCEEDED,
                output=hit.value,
                latency_ms=(workflow.time() - started) * 1000,
                cached=True,
            )
    try:
        queue = spec.activity_queue(args)
    except ValueError as err:
        task.event(f"{step.id}: failed: {err}")
        return StepResult(
            **call,
            status=StepStatus.FAILED,
            error=str(err),
            latency_ms=(workflow.time() - started) * 1000,
        )
    try:
        out = await workflow.execute_activity(
            durable.tool_activity(spec.name),
            ToolCall(
                workflow_id=workflow.info().workflow_id,
                workspace=task.workspace,
                step_id=durable.step_call_id(version, step.id),
                tool=spec.name,
                args=args,
                max_usd=spec.cost_per_call_usd,
                max_tokens=task.book.remaining_tokens(),
            ),
            result_type=ToolOutput,
            task_queue=task.queues.name(queue),
            summary=f"{spec.name}: {short_args(args)} (${spec.cost_per_call_usd:.3f})",
            priority=task.priority,
            **options.tool(spec),
        )
    except asyncio.CancelledError:
        # the call stopped half way: booked at its reservation, like a failure
        task.book.book_tool(
            spec.name, step.id, spec.cost_per_call_usd, workflow.time() - started, ok=False
        )
        task.event(f"{step.id}: cancelled")
        raise
    except ActivityError as err:
        cause = options.failure_cause(err)
        message = cause.message if cause else str(err.cause or err)
        # A failed call is booked at its reservation: a paid API may bill failures too.
        task.book.book_tool(
            spec.name, step.id, spec.cost_per_call_usd, workflow.time() - started, ok=False
        )
        task.event(f"{step.id}: failed: {message}")
        return StepResult(
            **call, status=StepStatus.FAILED, error=message, cost_usd=spec.cost_per_call_usd
        )
    for usage in out.usage:
        task.book.book_model(usage, step.id)
    tool_usd = out.cost_usd - sum(u.usd for u in out.usage)
    latency_ms = (workflow.time() - started) * 1000
    task.book.book_tool(spec.name, step.id, tool_usd, latency_ms / 1000, ok=True)
    task.event(f"{step.id}: done")
    if spec.cache is not None:
        await cache_store(
            task,
            CacheStore(
                kind=cache_kind,
                key=tool_call_key(args),
                user_id=task.user_id if spec.cache.per_user else None,
                value=out.output,
                semantic=spec.cache.semantic,
                ttl_s=spec.cache.ttl_s,
                source=f"{workflow.info().workflow_id}/v{version}.{step.id}",
            ),
        )
    return StepResult(
        **call,
        status=StepStatus.SUCCEEDED,
        output=out.output,
        cost_usd=out.cost_usd,
        latency_ms=latency_ms,
    )


# Runs started before this patch leave their copy of the files to the idle sweep.
RELEASE_PATCH = "keel-release-workspace"


async def release_workspace(task: TaskState) -> None:
    """The task has ended: the tools worker deletes its copy of the files, if it read any
    (best effort: a copy on another tools worker's disk goes with the idle sweep)."""
    if not task.read_files:
        return
    try:
        await workflow.execute_activity(
            durable.RELEASE_WORKSPACE,
            task.workspace,
            result_type=bool,
            task_queue=task.queues.tools,
            summary="release the task's files",
            **options.RELEASE,
        )
    except ActivityError as err:
        task.event(f"its files were not released (the idle sweep will): {err.cause or err}")
