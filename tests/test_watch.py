"""Live progress: a task pushes its events to watchers through the long-polling `watch` Update
(keel.client.watch_task, `keel watch`, `keel run`), on the session's real dev server."""

from __future__ import annotations

import asyncio
import re

import pytest
from temporalio.client import WorkflowUpdateStage

from keel import durable
from keel.client import WatchRefused, start_task, watch_task
from keel.contracts import Approval, TaskProgress, TaskRequest, TaskStatus, WatchRequest
from keel.testing import Stack, scripted_plan
from tests.conftest import TRANSFER_STEP, unique
from tests.test_cli_human import _spawn, keel_ok, waiting_for
from tests.test_human import refusal


def accepted_watches(events: list[object]) -> int:
    return sum(
        e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name  # type: ignore[attr-defined]
        == durable.UPDATE_WATCH
        for e in events
        if e.HasField("workflow_execution_update_accepted_event_attributes")  # type: ignore[attr-defined]
    )


async def test_a_watcher_gets_each_event_once_as_it_happens(stack: Stack) -> None:
    task = unique("Send bob five dollars, watched")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    handle = await start_task(stack.client, TaskRequest(task=task))
    seen: list[TaskProgress] = []
    printed: list[str] = []
    approved = False
    async with asyncio.timeout(60):
        async for progress in watch_task(stack.client, handle.id):
            seen.append(progress)
            new = progress.events_total - (seen[-2].events_total if len(seen) > 1 else 0)
            printed += progress.events[len(progress.events) - new :]
            if progress.status == TaskStatus.AWAITING_APPROVAL and not approved:
                # the watcher learnt of the wait as it began: the person can act on it
                await handle.execute_update(durable.UPDATE_APPROVE, Approval(step_id="s1"))
                approved = True
    result = await handle.result()

    assert approved and result.status == TaskStatus.COMPLETED
    final = seen[-1]
    assert final.status == TaskStatus.COMPLETED and final.total_usd == result.ledger.total_usd
    # every event once, in order, ending with the task's end
    totals = [p.events_total for p in seen]
    assert totals == sorted(set(totals)) and totals[-1] == final.events_total
    assert printed == final.events[-len(printed) :] and len(printed) == final.events_total
    assert printed[-1] == "finished: completed"
    assert any("approved" in e for e in printed)
    # pushed, not polled: one watch Update per answer the watcher got, each answered
    # because something happened (far fewer than a poll every 0.3 s over the task's life);
    # the last answer may come from the ended task's status instead
    history = (await handle.fetch_history()).events
    assert len(seen) - 1 <= accepted_watches(history) <= len(seen)
    assert len(seen) <= final.events_total


async def test_an_ended_task_gives_its_last_progress_once(stack: Stack) -> None:
    task = unique("What is 6*7, watched late?")
    stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
    )
    handle = await start_task(stack.client, TaskRequest(task=task))
    await handle.result()
    seen = [p async for p in watch_task(stack.client, handle.id)]
    assert [p.status for p in seen] == [TaskStatus.COMPLETED]
    assert seen[0].events[-1] == "finished: completed"


async def test_watchers_are_bounded_and_checked(stack: Stack) -> None:
    task = unique("Send bob five dollars, crowded")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    handle = await start_task(stack.client, TaskRequest(task=task))
    await waiting_for(handle, "s1")
    progress = await handle.query(durable.QUERY_STATUS, result_type=TaskProgress)
    total = progress.events_total
    # a watcher ahead of the task would wait forever: refused, in one line
    message = await refusal(
        handle.execute_update(durable.UPDATE_WATCH, WatchRequest(after=total + 5))
    )
    assert message == f"after={total + 5}: the task has had {total} events; give at most that"
    # eight wait at once (each accepted before the next is sent); a ninth is refused and
    # told where else to look
    waiting = [
        await handle.start_update(
            durable.UPDATE_WATCH,
            WatchRequest(after=total),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=TaskProgress,
        )
        for _ in range(8)
    ]
    with pytest.raises(WatchRefused, match="8 watchers are waiting on this task already"):
        async for _ in watch_task(stack.client, handle.id, after=total):
            pass
    # the approval is news: all eight return it, and the task goes on
    await handle.execute_update(durable.UPDATE_APPROVE, Approval(step_id="s1"))
    answers = await asyncio.gather(*(w.result() for w in waiting))
    assert all(a.events_total > total for a in answers)
    assert (await handle.result()).status == TaskStatus.COMPLETED


async def test_keel_watch_prints_events_as_they_happen_then_the_result(stack: Stack) -> None:
    task = unique("Send bob five dollars, watched from a terminal")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    handle = await start_task(stack.client, TaskRequest(task=task))
    process = await _spawn(stack, "watch", handle.id)
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        # it shows the wait for approval while the task waits (not only at the end)
        while not any(line.lstrip().startswith("⏸") for line in lines):
            line = (await process.stdout.readline()).decode()
            assert line, f"`keel watch` ended early: {lines}"
            lines.append(line.rstrip("\n"))
        assert process.returncode is None
        await handle.execute_update(durable.UPDATE_APPROVE, Approval(step_id="s1"))
        rest, _ = await process.communicate()
    out = "\n".join(lines) + "\n" + rest.decode()
    assert process.returncode == 0, out
    assert out.startswith(f"Watching task {handle.id}")
    assert re.search(r"· s1: approved", out) and "· finished: completed" in out
    assert "Status: completed" in out and "sent $5 to bob" in out
    # a finished task: its end and result at once
    again = await keel_ok(stack, "watch", handle.id)
    assert "· finished: completed" in again and "Status: completed" in again
