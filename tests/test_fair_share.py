"""One task or one kind of work cannot take everything: blocking work runs on a bounded pool
per kind (keel/_pools.py), a task runs at most `max_parallel_steps` steps at once, and its
calls carry its user's fairness key (the server dispatches a backlog in turn between users;
bench/fairness.py measures it)."""

from __future__ import annotations

import asyncio
import json
import threading

from temporalio.api.enums.v1 import EventType

from keel._pools import pool, run_in
from keel._queues import FAIRNESS_KEY_BYTES, fairness_key
from keel.client import start_task
from keel.contracts import TaskRequest, TaskStatus
from keel.testing import Stack
from tests.conftest import unique

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
