"""One task or one kind of work cannot take everything: blocking work runs on a bounded pool
per kind (keel/_pools.py), a task runs at most `max_parallel_steps` steps at once, and its
calls carry its user's fairness key (the server dispatches a backlog in turn between users;
bench/fairness.py measures it)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.tools.registry import ToolContext, define_tool
from keel._pools import pool, run_in
from keel._queues import FAIRNESS_KEY_BYTES, SANDBOX, Queues, fairness_key
from keel._stalls import activity_backlog
from keel.client import start_task
from keel.contracts import TaskRequest, TaskStatus
from keel.settings import Settings
from keel.testing import Stack, eventually, scripted_components
from tests.conftest import unique
from workers.process import build_all, workers_running

CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
}


async def test_a_full_pool_of_one_kind_does_not_delay_another_kind() -> None:
    release = threading.Event()
    busy = pool("test-busy", 2)
    blocked = [asyncio.ensure_future(run_in(busy, release.wait, 30)) for _ in range(4)]
    try:
        # every thread of the busy kind waits; the other kind's call still runs at once
        name = await asyncio.wait_for(
            run_in(pool("test-other", 1), lambda: threading.current_thread().name), timeout=5
        )
        assert name.startswith("keel-test-other")
        assert not any(b.done() for b in blocked)
    finally:
        release.set()
        assert all(await asyncio.gather(*blocked))


async def test_a_wide_plan_runs_at_most_its_cap_of_steps_at_once(stack: Stack) -> None:
    task = unique("Compute twelve things")
    steps = [
        {"id": f"s{i}", "tool": "calculator", "args": {"expression": f"{i}*{i}"}}
        for i in range(1, 13)
    ]
    stack.model.script(task, "plan", json.dumps({"steps": steps, "answer": "{{s12.value}}"}))
    request = TaskRequest(task=task, max_plan_steps=12, max_parallel_steps=3)
    handle = await start_task(stack.client, request)
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.answer == "144"

    in_flight: set[int] = set()
    most = calls = 0
    for e in (await handle.fetch_history()).events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = e.activity_task_scheduled_event_attributes.activity_type.name
            if name.startswith("tool."):
                in_flight.add(e.event_id)
                calls += 1
                most = max(most, len(in_flight))
        elif e.event_type in CLOSED:
            kind = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_").lower()
            attributes = getattr(e, f"{kind}_event_attributes")
            in_flight.discard(attributes.scheduled_event_id)
    assert calls == 12
    assert most == 3


def test_a_fairness_key_is_the_user_or_a_digest_that_fits() -> None:
    assert fairness_key("alice") == "alice"
    long_ids = ["\N{GRINNING FACE}" * 200, "\N{GRINNING FACE}" * 199 + "x"]
    keys = [fairness_key(u) for u in long_ids]
    assert all(len(k.encode()) <= FAIRNESS_KEY_BYTES for k in keys)
    assert keys[0] != keys[1] and keys[0] == fairness_key(long_ids[0])


async def test_tool_and_model_calls_carry_their_users_fairness_key(stack: Stack) -> None:
    task = unique("Compute a product for a tenant")
    user = unique("tenant")
    steps = [{"id": "s1", "tool": "calculator", "args": {"expression": "4*4"}}]
    stack.model.script(task, "plan", json.dumps({"steps": steps}))
    handle = await start_task(stack.client, TaskRequest(task=task, user_id=user))
    assert (await handle.result()).status == TaskStatus.COMPLETED
    keys = {}
    for e in (await handle.fetch_history()).events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            keys[a.activity_type.name] = a.priority.fairness_key
    assert keys["tool.calculator"] == user and keys["plan"] == user
    assert keys["synthesize"] == user


class _Held(BaseModel):
    tag: str


class _Released(BaseModel):
    tag: str


async def _equals(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def test_a_backlog_is_dispatched_in_turn_between_users(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """One sandbox slot: user A's six steps queue behind their first, which holds it; user
    B's one step, queued after all of them, runs next (or after one more of A's, already on
    its way to the worker); first in first out would run it last. The session's dev server
    has fairness on (temporal/devserver.py)."""
    gate = asyncio.Event()
    started: list[str] = []

    async def hold(args: _Held, ctx: ToolContext) -> _Released:
        started.append(args.tag)
        await gate.wait()
        return _Released(tag=args.tag)

    settings = Settings(
        home=tmp_path, planner_model="scripted", reasoner_model="scripted", sandbox_threads=1
    )
    tool = define_tool("hold", "Wait for the gate.", hold, _Held, _Released, queue=SANDBOX)
    components, model = scripted_components(
        settings, Queues(f"fair{uuid.uuid4().hex[:8]}-"), [tool]
    )
    client = temporal_env.client

    def plan(user: str, n: int) -> str:
        steps = [{"id": f"s{i}", "tool": "hold", "args": {"tag": f"{user}{i}"}} for i in range(n)]
        return json.dumps({"steps": steps, "answer": "held"})

    async def scheduled(handle: WorkflowHandle[Any, Any], n: int) -> bool:
        names = [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in (await handle.fetch_history()).events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        return names.count("tool.hold") == n

    try:
        async with workers_running(build_all(client, components)):
            first, second = unique("Hold for A"), unique("Hold for B")
            model.script(first, "plan", plan("A", 6))
            model.script(second, "plan", plan("B", 1))
            queues = components.queues
            a = await start_task(client, TaskRequest(task=first, user_id="A"), queues=queues)
            await eventually(lambda: scheduled(a, 6), "A's six steps to be scheduled")
            b = await start_task(client, TaskRequest(task=second, user_id="B"), queues=queues)
            await eventually(lambda: scheduled(b, 1), "B's step to be scheduled")
            # a step in history reaches the queue a moment later (the server's transfer):
            # the order is only the queue's to choose once all six waiting steps are in it
            sandbox = queues.name(SANDBOX)
            await eventually(
                lambda: _equals(activity_backlog(client, sandbox), 6), "6 steps in the queue"
            )
            assert len(started) == 1  # one slot: the rest wait in the queue
            gate.set()
            assert (await b.result()).status == TaskStatus.COMPLETED
            assert (await a.result()).status == TaskStatus.COMPLETED
    finally:
        components.close_memory()
    assert started.index("B0") <= 2, started
