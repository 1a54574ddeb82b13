"""The AgentTask waiting for people: approvals and questions, the status a person watching
sees while the task waits, and the escalation when nobody decides in time.

The wait itself (pending requests, Update decisions, the timer) is workflows/human.py.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

from keel import durable
from keel.contracts import Notification, PendingKind, PendingRequest, TaskStatus
from workflows import activity_options as options
from workflows.human import Decision
from workflows.state import TaskState


async def ask(
    task: TaskState, kind: PendingKind, request_id: str, text: str, cost_usd: float = 0.0
) -> Decision:
    """Wait for a person to decide (an approval) or answer (a question)."""
    pending = PendingRequest(
        kind=kind, id=request_id, text=text, expected_cost_usd=cost_usd, asked_at=workflow.now()
    )
    if not task.status.is_waiting:
        task.working_status = task.status
    task.human.open(pending)
    _show_waiting(task)

    async def escalate(pending: PendingRequest, waited_s: float) -> None:
        await _escalate(task, pending, waited_s)

    # a wait that ends otherwise (cancelled, timed out) ends the task, which says so
    decision = await task.human.wait(pending, task.request.human, escalate)
    _show_waiting(task)
    return decision


def _show_waiting(task: TaskState) -> None:
    kind = task.human.waiting_for()
    ids = ", ".join(task.human.pending)
    if kind == PendingKind.APPROVAL:
        task.set_status(TaskStatus.AWAITING_APPROVAL, f"waiting for approval: {ids}")
    elif kind == PendingKind.QUESTION:
        task.set_status(TaskStatus.AWAITING_ANSWER, f"waiting for an answer: {ids}")
    elif task.status.is_waiting:
        task.set_status(task.working_status, "a person decided; going on")


async def _escalate(task: TaskState, pending: PendingRequest, waited_s: float) -> None:
    """Nobody decided in time: tell someone (then the task keeps waiting)."""
    task.event(f"{pending.id}: no decision after {waited_s:g} s; escalating")
    try:
        await workflow.execute_activity(
            durable.NOTIFY_HUMAN,
            Notification(
                workflow_id=workflow.info().workflow_id,
                user_id=task.user_id,
                kind=pending.kind,
                id=pending.id,
                text=pending.text,
                waited_s=waited_s,
            ),
            task_queue=workflow.info().task_queue,
            summary=f"notify: {pending.kind.value} {pending.id} waited {waited_s:g} s",
            **options.NOTIFY,
        )
    except ActivityError as err:
        task.event(f"{pending.id}: the notification failed: {err.cause or err}")
