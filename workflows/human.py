"""Waiting for a person inside a workflow: what is pending, the decisions that arrive by
Update, and the timeout that escalates or gives up.

Workflow code (deterministic). A wait is one `wait_condition`: while nobody answers, the
history gains no events (one timer is started when the wait begins), and the wait survives
worker and server restarts because the workflow replays into it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

from keel.contracts import HumanPolicy, PendingKind, PendingRequest
from keel.errors import KeelError
from workflows import metrics


@dataclass(frozen=True)
class Decision:
    approved: bool
    text: str  # the answer, or why the step was rejected
    by: str


class TimedOutWaiting(KeelError):
    """No one decided within the policy's timeout, and the policy says to give up."""


Escalate = Callable[[PendingRequest, float], Awaitable[None]]


class HumanDesk:
    def __init__(self) -> None:
        self.pending: dict[str, PendingRequest] = {}
        self.interventions = 0
        self._decisions: dict[str, Decision] = {}

    def waiting_for(self) -> PendingKind | None:
        kinds = {p.kind for p in self.pending.values()}
        if PendingKind.APPROVAL in kinds:
            return PendingKind.APPROVAL
        return PendingKind.QUESTION if kinds else None

    # --- Update validators: refuse before anything is written to history -----------------

    def check_approval(self, step_id: str) -> None:
        found = self.pending.get(step_id)
        if found is None or found.kind != PendingKind.APPROVAL:
            waiting = [p.id for p in self.pending.values() if p.kind == PendingKind.APPROVAL]
            raise ValueError(
                f"step {step_id!r} is not waiting for approval; "
                + (f"waiting: {', '.join(waiting)}" if waiting else "no step is waiting")
            )

    def question_id(self, question_id: str | None) -> str:
        """The open question an answer is for; ValueError when that is unclear."""
        open_ids = [p.id for p in self.pending.values() if p.kind == PendingKind.QUESTION]
        if question_id is None:
            if len(open_ids) == 1:
                return open_ids[0]
            if not open_ids:
                raise ValueError("the task is not waiting for an answer")
            raise ValueError(
                f"{len(open_ids)} questions are open ({', '.join(open_ids)}): say which one"
            )
        if question_id not in open_ids:
            raise ValueError(
                f"no open question {question_id!r}; open: {', '.join(open_ids) or 'none'}"
            )
        return question_id

    # --- Update handlers ---------------------------------------------------------------

    def decide(self, request_id: str, decision: Decision) -> None:
        # leaving `pending` at once makes a second decision for the same id fail validation
        self.pending.pop(request_id)
        self._decisions[request_id] = decision
        self.interventions += 1

    # --- the wait ----------------------------------------------------------------------

    def open(self, request: PendingRequest) -> None:
        self.pending[request.id] = request

    async def wait(
        self, request: PendingRequest, policy: HumanPolicy, escalate: Escalate
    ) -> Decision:
        """Wait for the decision on `request`. On timeout: escalate once and keep waiting
        without a timer, or raise TimedOutWaiting, as the policy says."""
        timeout: timedelta | None = timedelta(seconds=policy.wait_timeout_s)
        began = workflow.time()
        try:
            while True:
                try:
                    await workflow.wait_condition(
                        lambda: request.id in self._decisions,
                        timeout=timeout,
                        timeout_summary=f"waiting for a person: {request.kind.value} {request.id}",
                    )
                    metrics.human_waited(request.kind.value, workflow.time() - began, "decided")
                    return self._decisions.pop(request.id)
                except TimeoutError:
                    waited = policy.wait_timeout_s
                    if policy.on_timeout == "fail":
                        metrics.human_waited(request.kind.value, waited, "timed_out")
                        raise TimedOutWaiting(
                            f"no one answered the {request.kind.value} for {request.id} "
                            f"({request.text}) within {waited:g} s"
                        ) from None
                    await escalate(request, waited)
                    request.escalated = True  # once someone has been told
                    timeout = None
        finally:
            self.pending.pop(request.id, None)
