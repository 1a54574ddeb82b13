"""A worker set stopped mid-task and replaced: the task completes on the new workers, and
activities that had completed are not executed again."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from activities.tools.registry import Tool, ToolContext, define_tool
from keel._queues import Queues
from keel.client import start_task
from keel.contracts import StepStatus, TaskRequest, TaskResult, TaskStatus
from keel.settings import Settings
from keel.testing import Stack, scripted_plan, scripted_workers
from tests.conftest import unique


class _In(BaseModel):
    label: str


class _Out(BaseModel):
    text: str


async def across_two_worker_sets(
    stack: Stack, settings: Settings, tools: list[Tool], plan: str, mid_call: asyncio.Event
) -> TaskResult:
    """Start a task on one set of scripted workers with `tools`, stop the whole set once
    `mid_call` is set, and let a second set finish the task."""
    queues = Queues(f"restart-{uuid.uuid4().hex[:6]}-")
    task = unique("a task across two worker sets")
    async with scripted_workers(stack.client, settings, queues, tools) as (_, model):
        model.script(task, "plan", plan)
        handle = await start_task(stack.client, TaskRequest(task=task), queues=queues)
        await asyncio.wait_for(mid_call.wait(), timeout=60)
    # leaving the block stopped every worker of the first set, mid-call
    async with scripted_workers(stack.client, settings, queues, tools) as (_, model):
        model.script(task, "plan", plan)
        return await asyncio.wait_for(handle.result(), timeout=60)


async def test_replaced_workers_finish_the_task_without_repeating_work(
    stack: Stack, tmp_path: Path
) -> None:
    settings = stack.settings.model_copy(update={"home": tmp_path})  # own Qdrant files
    calls: Counter[str] = Counter()
    gate_started = asyncio.Event()

    async def count(args: _In, ctx: ToolContext) -> _Out:
        calls[f"count:{ctx.step_id}"] += 1
        return _Out(text=f"counted {args.label}")

    async def gate(args: _In, ctx: ToolContext) -> _Out:
        calls[f"gate:{ctx.step_id}"] += 1
        if not gate_started.is_set():  # the first call hangs until its worker is shut down
            gate_started.set()
            await asyncio.Event().wait()
        return _Out(text="gate passed")

    tools = [
        define_tool("count", "count a call", count, _In, _Out),
        define_tool("gate", "wait at a gate", gate, _In, _Out),
    ]
    plan = scripted_plan(
        {"id": "s1", "tool": "count", "args": {"label": "a"}},
        {"id": "s2", "tool": "gate", "args": {"label": "{{s1}}"}, "depends_on": ["s1"]},
    )
    result = await across_two_worker_sets(stack, settings, tools, plan, gate_started)

    assert result.status == TaskStatus.COMPLETED
    assert [s.status for s in result.steps] == [StepStatus.SUCCEEDED] * 2
    assert result.steps[1].output == {"text": "gate passed"}
    assert calls["count:v1.s1"] == 1  # completed before the stop: never run again
    assert calls["gate:v1.s2"] == 2  # interrupted once, retried on the new workers
    assert result.llm_calls == 2  # the plan was not made again either


async def test_a_draining_worker_lets_its_running_call_finish(stack: Stack, tmp_path: Path) -> None:
    """KEEL_WORKER_DRAIN_S: a worker asked to stop (a scale-down) finishes the call it is
    running instead of cancelling it, so the call is not paid for twice."""
    settings = stack.settings.model_copy(update={"home": tmp_path, "worker_drain_s": 30})
    calls: Counter[str] = Counter()
    started = asyncio.Event()

    async def slow(args: _In, ctx: ToolContext) -> _Out:
        calls[ctx.step_id] += 1
        started.set()
        await asyncio.sleep(1.5)
        return _Out(text=f"slowly {args.label}")

    tools = [define_tool("slow", "take a while", slow, _In, _Out)]
    plan = scripted_plan({"id": "s1", "tool": "slow", "args": {"label": "a"}})
    result = await across_two_worker_sets(stack, settings, tools, plan, started)

    assert result.status == TaskStatus.COMPLETED
    assert result.steps[0].output == {"text": "slowly a"}
    assert calls == {"v1.s1": 1}  # finished by the draining worker, not run again
