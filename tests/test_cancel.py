"""Cancelling a task: its in-flight tools stop (they heartbeat and notice), what was spent is
booked, it ends as cancelled, and its sub-agents are cancelled with it."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError

from keel import _search_attributes as sa
from keel.client import start_task
from keel.contracts import TaskProgress, TaskRequest, TaskResult, TaskStatus
from keel.testing import Stack, eventually, scripted_plan
from tests.conftest import unique
from tests.sandbox.conftest import MARK_READY, ready_processes, sandbox_processes

# Sleeps far past the sandbox's wall limit (10 s): without a cancel the wall limit would end
# the run, and its activity would complete instead of ending cancelled.
SLEEPER = f"import time\n{MARK_READY}\ntime.sleep(3600)\n"


def sleeper_step() -> dict[str, Any]:
    return {"id": "s1", "tool": "run_python", "args": {"code": SLEEPER}}


async def sleeping(stack: Stack) -> int:
    uids = (stack.settings.sandbox_uid, 1000)
    return await eventually(
        lambda: _ready(uids), "the sandboxed program to start sleeping", timeout_s=60
    )


async def _ready(uids: tuple[int, int]) -> int | None:
    return ready_processes(*uids) or None


async def event_types(handle: WorkflowHandle[Any, Any]) -> list[int]:
    return [e.event_type for e in (await handle.fetch_history()).events]


async def test_cancel_stops_the_running_tool_and_ends_the_task_cancelled(stack: Stack) -> None:
    task = unique("Run a very long computation")
    stack.model.script(task, "plan", scripted_plan(sleeper_step()))
    handle = await start_task(stack.client, TaskRequest(task=task))
    await sleeping(stack)

    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)

    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    types = await event_types(handle)
    # the tool noticed: its activity ended cancelled, not completed by the wall limit
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED in types
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in types  # recall, list_tools, plan
    assert not sandbox_processes(stack.settings.sandbox_uid, 1000)

    progress = await handle.query("status", result_type=TaskProgress)
    assert progress.status == TaskStatus.CANCELLED
    assert progress.total_usd > 0  # the plan was paid for, and is booked
    ledger = await handle.query("ledger")
    [tool] = [e for e in ledger["entries"] if e["kind"] == "tool"]
    assert tool["name"] == "run_python" and tool["ok"] is False
    attrs = (await handle.describe()).typed_search_attributes
    assert attrs.get(sa.STATUS) == "cancelled" and attrs.get(sa.WITHOUT_HUMAN) is False
    assert attrs.get(sa.COST_USD) == pytest.approx(progress.total_usd)


async def test_cancelling_the_parent_cancels_its_sub_agent(stack: Stack) -> None:
    task = unique("Have the coder run a very long computation")
    sub_task = unique("run the long computation")
    stack.model.script(
        task, "plan", scripted_plan({"id": "s1", "tool": "coder", "args": {"task": sub_task}})
    )
    stack.model.script(sub_task, "plan", scripted_plan(sleeper_step()))
    handle = await start_task(stack.client, TaskRequest(task=task))
    await sleeping(stack)

    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()

    child = stack.client.get_workflow_handle(f"{handle.id}.coder.v1.s1", result_type=TaskResult)
    child_result = await child.result()  # a sub-agent reports its spend to its parent
    assert child_result.status == TaskStatus.CANCELLED
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED in await event_types(child)
    assert not sandbox_processes(stack.settings.sandbox_uid, 1000)

    ledger = await handle.query("ledger")
    [agent] = [e for e in ledger["entries"] if e["kind"] == "agent"]
    assert agent["name"] == "coder"
    assert agent["usd"] == pytest.approx(child_result.ledger.total_usd)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
