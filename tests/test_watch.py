"""Live progress: a task pushes its events to watchers through the long-polling `watch` Update
(keel.client.watch_task, `keel watch`, `keel run`), on the session's real dev server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from temporalio.client import WorkflowUpdateStage
from temporalio.exceptions import ApplicationError

from keel import durable
from keel.client import start_task, watch_task
from keel.contracts import Approval, TaskProgress, TaskRequest, TaskStatus, WatchRequest
from keel.testing import Stack, eventually, scripted_plan
from tests.conftest import TRANSFER_STEP, unique
from tests.test_cli_human import _spawn, keel_ok, waiting_for
from tests.test_human import refusal
from workflows.agent_task import MAX_WATCH_ANSWERS, MAX_WATCHERS, AgentTask


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

    async def watch() -> None:
        async for progress in watch_task(stack.client, handle.id):
            seen.append(progress)

    watcher = asyncio.ensure_future(watch())

    # the watcher learns of the wait for approval as it begins, then waits in a watch Update
    # (no query every second) while the person takes their time
    async def saw_the_wait() -> bool:
        return any(p.status == TaskStatus.AWAITING_APPROVAL for p in seen)

    await eventually(saw_the_wait, "the watcher to see the wait for approval")

    async def waiting_in_watch() -> bool:
        return accepted_watches((await handle.fetch_history()).events) >= 1

    await eventually(waiting_in_watch, "the watcher to wait in a watch Update")
    before = len(seen)
    await handle.execute_update(durable.UPDATE_APPROVE, Approval(step_id="s1"))
    async with asyncio.timeout(60):
        await watcher
    result = await handle.result()

    assert result.status == TaskStatus.COMPLETED
    assert len(seen) > before  # the approval and the rest came to it
    final = seen[-1]
    assert final.status == TaskStatus.COMPLETED and final.total_usd == result.ledger.total_usd
    # every event once, in order, ending with the task's end
    totals = [p.events_total for p in seen]
    assert totals == sorted(set(totals)) and totals[-1] == final.events_total
    printed: list[str] = []
    for previous, progress in zip([0, *totals], seen, strict=False):
        new = progress.events_total - previous
        printed += progress.events[len(progress.events) - new :]
    assert printed == final.events[-len(printed) :] and len(printed) == final.events_total
    assert printed[-1] == "finished: completed"
    assert any("approved" in e for e in printed)
    # each watch Update answered because something happened: no more than what it saw
    history = (await handle.fetch_history()).events
    assert 1 <= accepted_watches(history) <= len(seen) <= final.events_total


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
    # a watcher behind the task catches up with the status query first (free), so that
    # every watch answer is news
    message = await refusal(
        handle.execute_update(durable.UPDATE_WATCH, WatchRequest(after=total - 1))
    )
    assert "read them with the `status` query, then watch from there" in message
    # eight wait at once (each accepted before the next is sent); a ninth is refused...
    waiting = [
        await handle.start_update(
            durable.UPDATE_WATCH,
            WatchRequest(after=total),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=TaskProgress,
        )
        for _ in range(8)
    ]
    message = await refusal(handle.execute_update(durable.UPDATE_WATCH, WatchRequest(after=total)))
    assert message.startswith("this run of the task takes no more watchers (8 waiting")
    # ... and watch_task then reads the status query instead: it still sees everything
    crowded = asyncio.ensure_future(_statuses(watch_task(stack.client, handle.id, after=total)))
    # the approval is news: all eight return it, and the task goes on
    await handle.execute_update(durable.UPDATE_APPROVE, Approval(step_id="s1"))
    answers = await asyncio.gather(*(w.result() for w in waiting))
    assert all(a.events_total > total for a in answers)
    async with asyncio.timeout(60):
        assert (await crowded)[-1] == TaskStatus.COMPLETED
    assert (await handle.result()).status == TaskStatus.COMPLETED


async def _statuses(watching: AsyncIterator[TaskProgress]) -> list[TaskStatus]:
    return [p.status async for p in watching]


def test_a_run_answers_a_bounded_number_of_watchers() -> None:
    """The validator alone (no server needed): behind, ahead, crowded and spent."""
    task = AgentTask.__new__(AgentTask)
    task._task = SimpleNamespace(events_total=5)  # type: ignore[assignment]
    task._watchers, task._watch_answers = 0, 0
    task._watch_room(WatchRequest(after=5))  # caught up: taken
    with pytest.raises(ApplicationError) as behind:
        task._watch_room(WatchRequest(after=4))
    assert behind.value.type == durable.WATCH_BEHIND
    with pytest.raises(ValueError, match="give at most that"):
        task._watch_room(WatchRequest(after=6))
    for watchers, answers in ((MAX_WATCHERS, 0), (0, MAX_WATCH_ANSWERS)):
        task._watchers, task._watch_answers = watchers, answers
        with pytest.raises(ApplicationError) as full:
            task._watch_room(WatchRequest(after=5))
        assert full.value.type == durable.WATCH_FULL
    assert MAX_WATCH_ANSWERS * 2 + 100 < 2000  # the server's Updates per run: room for people


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
