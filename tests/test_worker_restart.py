"""A worker set stopped mid-task and replaced: the task completes on the new workers, and
activities that had completed are not executed again."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from activities.models.scripted import ScriptedModel
from activities.tools.registry import ToolContext, define_tool
from keel._queues import Queues
from keel.client import start_task
from keel.contracts import StepStatus, TaskRequest, TaskStatus
from keel.testing import Stack, scripted_plan
from tests.conftest import scripted_components, unique
from workers.components import Components
from workers.process import build_all, run_workers


class _In(BaseModel):
    label: str


class _Out(BaseModel):
    text: str


async def test_replaced_workers_finish_the_task_without_repeating_work(
    stack: Stack, tmp_path: Path
) -> None:
    settings = stack.settings.model_copy(update={"home": tmp_path})  # own Qdrant files
    queues = Queues("restart-")
    calls: Counter[str] = Counter()
    gate_started = asyncio.Event()
    first_set_running = True

    async def count(args: _In, ctx: ToolContext) -> _Out:
        calls[f"count:{ctx.step_id}"] += 1
        return _Out(text=f"counted {args.label}")

    async def gate(args: _In, ctx: ToolContext) -> _Out:
        calls[f"gate:{ctx.step_id}"] += 1
        if first_set_running:
            gate_started.set()
            await asyncio.Event().wait()  # hangs until its worker is shut down
        return _Out(text="gate passed")

    def worker_set() -> tuple[Components, ScriptedModel]:
        components, model = scripted_components(settings, queues)
        components.registry.add(define_tool("count", "count a call", count, _In, _Out))
        components.registry.add(define_tool("gate", "wait at a gate", gate, _In, _Out))
        return components, model

    task = unique("count then gate")
    plan = scripted_plan(
        {"id": "s1", "tool": "count", "args": {"label": "a"}},
        {"id": "s2", "tool": "gate", "args": {"label": "{{s1}}"}, "depends_on": ["s1"]},
    )
    first, first_model = worker_set()
    first_model.script(task, "plan", plan)
    stop_first = asyncio.Event()
    first_run = asyncio.create_task(run_workers(build_all(stack.client, first), stop_first))
    handle = await start_task(stack.client, TaskRequest(task=task), queues=queues)
    await asyncio.wait_for(gate_started.wait(), timeout=60)

    stop_first.set()  # the whole first set goes away mid-step
    await first_run
    first.close_memory()
    first_set_running = False

    second, second_model = worker_set()
    second_model.script(task, "plan", plan)
    stop_second = asyncio.Event()
    second_run = asyncio.create_task(run_workers(build_all(stack.client, second), stop_second))
    try:
        result = await asyncio.wait_for(handle.result(), timeout=60)
    finally:
        stop_second.set()
        await second_run
        second.close_memory()

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
    queues = Queues("drain-")
    calls: Counter[str] = Counter()
    started = asyncio.Event()

    async def slow(args: _In, ctx: ToolContext) -> _Out:
        calls[ctx.step_id] += 1
        started.set()
        await asyncio.sleep(1.5)
        return _Out(text=f"slowly {args.label}")

    def worker_set() -> Components:
        components, model = scripted_components(settings, queues)
        components.registry.add(define_tool("slow", "take a while", slow, _In, _Out))
        model.script(
            task, "plan", scripted_plan({"id": "s1", "tool": "slow", "args": {"label": "a"}})
        )
        return components

    task = unique("slow call through a scale-down")
    first = worker_set()
    stop_first = asyncio.Event()
    first_run = asyncio.create_task(run_workers(build_all(stack.client, first), stop_first))
    handle = await start_task(stack.client, TaskRequest(task=task), queues=queues)
    await asyncio.wait_for(started.wait(), timeout=60)
    stop_first.set()  # while the call runs
    await first_run  # returns once the running call has finished
    first.close_memory()

    second = worker_set()
    stop_second = asyncio.Event()
    second_run = asyncio.create_task(run_workers(build_all(stack.client, second), stop_second))
    try:
        result = await asyncio.wait_for(handle.result(), timeout=60)
    finally:
        stop_second.set()
        await second_run
        second.close_memory()

    assert result.status == TaskStatus.COMPLETED
    assert result.steps[0].output == {"text": "slowly a"}
    assert calls == {"v1.s1": 1}  # finished by the draining worker, not run again
