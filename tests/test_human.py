"""A person in the loop: approvals, rejections, questions, timeouts, on the real dev server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from keel import _search_attributes as sa
from keel._ports import free_port
from keel._queues import Queues
from keel.client import connect_when_serving, start_task
from keel.contracts import (
    Approval,
    HumanAnswer,
    HumanPolicy,
    PendingKind,
    PendingRequest,
    Rejection,
    StepStatus,
    TaskRequest,
    TaskResult,
    TaskStatus,
)
from keel.testing import Stack, eventually, scripted_plan
from temporal.devserver import DevServer
from tests.conftest import (
    QUESTION_STEP,
    SQUARE_STEP,
    TRANSFER_STEP,
    TRANSFERS,
    scripted_workers,
    unique,
)


async def waiting_for(
    handle: WorkflowHandle[Any, TaskResult], request_id: str
) -> list[PendingRequest]:
    async def pending() -> list[PendingRequest] | None:
        found = await handle.query("pending", result_type=list[PendingRequest])
        return found if any(p.id == request_id for p in found) else None

    return await eventually(pending, f"the task to wait for a decision on {request_id}")


async def refusal(call: Any) -> str:
    """The message an Update validator refused with."""
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await call
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    return cause.message


def history_has_updates(events: list[Any]) -> int:
    return sum(e.HasField("workflow_execution_update_accepted_event_attributes") for e in events)


async def test_a_step_needing_approval_waits_then_runs_once_approved(stack: Stack) -> None:
    task = unique("Send bob five dollars")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    before = len(TRANSFERS)
    handle = await start_task(stack.client, TaskRequest(task=task))

    [pending] = await waiting_for(handle, "s1")
    assert pending.kind == PendingKind.APPROVAL
    assert pending.text == 'transfer(to="bob", usd=5)' and pending.expected_cost_usd == 0.001
    assert len(TRANSFERS) == before  # not yet
    # the operator's console: the task is listed as waiting for approval
    listed = f'WorkflowId="{handle.id}" AND KeelStatus="awaiting_approval"'
    await eventually(
        lambda: _count(stack, listed), "visibility to list the task as awaiting approval"
    )

    # an unknown step is refused by the validator, and leaves no trace in history
    message = await refusal(handle.execute_update("approve", Approval(step_id="s9")))
    assert message == "step 's9' is not waiting for approval; waiting: s1"
    assert history_has_updates((await handle.fetch_history()).events) == 0

    assert await handle.execute_update("approve", Approval(step_id="s1", by="carol")) == (
        "approved s1"
    )
    # a second decision on the same step is refused: nothing is waiting any more
    message = await refusal(handle.execute_update("reject", Rejection(step_id="s1", reason="x")))
    assert "not waiting for approval" in message

    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    assert len(TRANSFERS) == before + 1
    assert result.steps[0].status == StepStatus.SUCCEEDED
    assert result.steps[0].output == {"text": "sent $5 to bob"}
    assert result.human_interventions == 1 and not result.completed_without_human
    attrs = (await handle.describe()).typed_search_attributes
    assert attrs.get(sa.STATUS) == "completed" and attrs.get(sa.WITHOUT_HUMAN) is False


async def _count(stack: Stack, query: str) -> bool:
    return (await stack.client.count_workflows(query)).count > 0


async def test_a_rejected_step_is_not_run_and_the_reason_reaches_the_planner(
    stack: Stack,
) -> None:
    task = unique("Send bob five dollars, or tell me why not")
    stack.model.script(
        task,
        "plan",
        scripted_plan(TRANSFER_STEP),
        scripted_plan({"id": "s2", "tool": "calculator", "args": {"expression": "5*1"}}),
    )
    before = len(TRANSFERS)
    handle = await start_task(stack.client, TaskRequest(task=task))
    await waiting_for(handle, "s1")
    await handle.execute_update("reject", Rejection(step_id="s1", reason="too risky", by="dan"))

    result = await handle.result()
    assert len(TRANSFERS) == before  # never ran
    assert [(s.step_id, s.status) for s in result.steps] == [
        ("s1", StepStatus.FAILED),
        ("s2", StepStatus.SUCCEEDED),
    ]
    assert result.steps[0].error == "rejected by dan: too risky"
    assert result.status == TaskStatus.COMPLETED and result.replans == 1
    plan_inputs = _activity_inputs(await handle.fetch_history(), "plan")
    assert any("rejected by dan: too risky" in f for f in plan_inputs[1]["failures"])


def _activity_inputs(history: Any, activity_type: str) -> list[dict[str, Any]]:
    return [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity_type
    ]


async def test_an_expensive_plan_waits_for_approval_of_the_whole_plan(stack: Stack) -> None:
    task = unique("Send bob five dollars (costly)")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    request = TaskRequest(task=task, human=HumanPolicy(approve_plans_above_usd=0.0005))
    handle = await start_task(stack.client, request)

    [pending] = await waiting_for(handle, "plan")
    assert pending.text.startswith("plan v1, expected $0.00")
    assert "over $0.0005" in pending.text and 's1=transfer(to="bob", usd=5)' in pending.text
    await handle.execute_update("approve", Approval(step_id="plan"))
    await waiting_for(handle, "s1")  # then the step itself, which needs approval anyway
    await handle.execute_update("approve", Approval(step_id="s1"))

    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    assert result.human_interventions == 2


async def test_ask_human_pauses_for_an_answer(stack: Stack) -> None:
    task = unique("Ask me which number to square, then square it")
    stack.model.script(
        task,
        "plan",
        scripted_plan(QUESTION_STEP, SQUARE_STEP),
    )
    request = TaskRequest(task=task, human=HumanPolicy(questions=True))
    handle = await start_task(stack.client, request)
    [pending] = await waiting_for(handle, "s1")
    assert pending.kind == PendingKind.QUESTION and pending.text == "Which number?"
    assert (await handle.query("status")).get("status") == "awaiting_answer"

    message = await refusal(handle.execute_update("answer", HumanAnswer(text="7", question_id="q")))
    assert message == "no open question 'q'; open: s1"
    message = await refusal(handle.execute_update("approve", Approval(step_id="s1")))
    assert message == "step 's1' is not waiting for approval; no step is waiting"
    assert await handle.execute_update("answer", HumanAnswer(text="7")) == "answered s1"

    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    assert result.steps[0].output == {"answer": "7"}
    assert result.steps[1].output is not None and result.steps[1].output["value"] == 49
    assert result.human_interventions == 1


async def test_no_answer_in_time_ends_the_task_as_timed_out_waiting(stack: Stack) -> None:
    task = unique("Send bob five dollars (nobody is there)")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    policy = HumanPolicy(wait_timeout_s=1, on_timeout="fail")
    handle = await start_task(stack.client, TaskRequest(task=task, human=policy))

    result = await handle.result()
    assert result.status == TaskStatus.TIMED_OUT_WAITING
    assert result.error is not None
    assert result.error.startswith(
        'no one answered the approval for s1 (transfer(to="bob", usd=5))'
    )
    assert not result.completed_without_human
    attrs = (await handle.describe()).typed_search_attributes
    assert attrs.get(sa.STATUS) == "timed_out_waiting" and attrs.get(sa.WITHOUT_HUMAN) is False


async def test_a_late_decision_escalates_then_the_task_keeps_waiting(stack: Stack) -> None:
    task = unique("Send bob five dollars (slow approver)")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    policy = HumanPolicy(wait_timeout_s=1, on_timeout="escalate")
    handle = await start_task(stack.client, TaskRequest(task=task, human=policy))

    async def escalated() -> list[PendingRequest] | None:
        pending = await handle.query("pending", result_type=list[PendingRequest])
        return pending if pending and pending[0].escalated else None

    [pending] = await eventually(escalated, "the wait to escalate")
    notes = [
        json.loads(line) for line in stack.settings.notifications_path.read_text().splitlines()
    ]
    mine = [n for n in notes if n["workflow_id"] == handle.id]
    assert mine == [
        {
            "workflow_id": handle.id,
            "user_id": "anonymous",
            "kind": "approval",
            "id": "s1",
            "text": 'transfer(to="bob", usd=5)',
            "waited_s": 1.0,
        }
    ]
    assert (await handle.query("status")).get("status") == "awaiting_approval"
    await handle.execute_update("approve", Approval(step_id="s1"))
    assert (await handle.result()).status == TaskStatus.COMPLETED


async def test_a_wait_survives_worker_and_server_restarts_and_adds_no_events(
    stack: Stack, tmp_path: Path
) -> None:
    """The task waits on its own dev server (a SQLite file); workers and server are stopped
    and started again while it waits, and its history does not grow until the approval."""
    server = DevServer(tmp_path / "temporal.db", port=free_port(), ui_port=None)
    settings = stack.settings.model_copy(
        update={"home": tmp_path / "home", "temporal_address": server.address}
    )
    task = unique("Send bob five dollars (across restarts)")

    server.start()
    try:
        # (a restarted server opens its port before its frontend is healthy)
        client = await connect_when_serving(settings)
        async with scripted_workers(client, settings) as (_, model):
            model.script(task, "plan", scripted_plan(TRANSFER_STEP))
            handle = await start_task(client, TaskRequest(task=task), queues=Queues())
            await waiting_for(handle, "s1")
            waiting = len((await handle.fetch_history()).events)
        server.stop()
        server.start()

        client = await connect_when_serving(settings)
        async with scripted_workers(client, settings) as (_, model):
            model.script(task, "plan", scripted_plan(TRANSFER_STEP))
            handle = client.get_workflow_handle(handle.id, result_type=TaskResult)
            [pending] = await waiting_for(handle, "s1")  # replayed by a new worker
            assert pending.text == 'transfer(to="bob", usd=5)'
            assert len((await handle.fetch_history()).events) == waiting
            await handle.execute_update("approve", Approval(step_id="s1"))
            result = await handle.result()
    finally:
        server.stop()
    assert result.status == TaskStatus.COMPLETED
    assert result.steps[0].output == {"text": "sent $5 to bob"}
