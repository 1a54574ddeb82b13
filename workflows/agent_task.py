"""The AgentTask workflow: recall, plan, validate, execute, re-plan, synthesize, remember.

Deterministic orchestration only: every side effect is an activity on its component's task
queue. This class is the durable surface (queries, updates, the run); the work is done by
small modules over one state object (workflows/state.py):

    memory_calls  recall, catalog, cache, facts, remember
    planning      plan → validate → approve → execute → re-plan, continue-as-new
    execution     the plan's steps as tool activities, people and sub-agents
    answer        synthesis (cached)
    react         the one-call-per-step baseline
    people        approvals, questions, escalation
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from keel import _search_attributes as sa
from keel import durable
from keel._core.budget import BudgetExhausted
from keel._queues import Queues
from keel.contracts import (
    Approval,
    HumanAnswer,
    Ledger,
    PendingRequest,
    Plan,
    Rejection,
    TaskProgress,
    TaskRequest,
    TaskResult,
    TaskStatus,
    WatchRequest,
)
from keel.errors import InvalidInput
from workflows import memory_calls, metrics
from workflows.answer import synthesize
from workflows.execution import RELEASE_PATCH, release_workspace
from workflows.human import Decision, TimedOutWaiting
from workflows.planning import plan_and_execute
from workflows.react import react
from workflows.state import LEAN_PATCH, Outcome, TaskState

# Watchers one run answers at once, and in all: each answer is two history events (the
# `status` query costs none), and the server takes 2,000 Updates per run, approvals included.
MAX_WATCHERS = 8
MAX_WATCH_ANSWERS = 200


@workflow.defn(name=durable.AGENT_TASK)
class AgentTask:
    @workflow.init
    def __init__(self, request: TaskRequest) -> None:
        # Carried state (a ledger, a plan half run) is what this workflow hands its next run
        # when it continues as new; a run a caller started has none to adopt. The server
        # sets `continued_run_id` only on a continue-as-new, and no caller can set it.
        self._forged_carry = request.carried is not None and not workflow.info().continued_run_id
        if self._forged_carry:
            request = request.model_copy(update={"carried": None})
        # the state exists before the first handler runs, so a query or an update that
        # arrives with the start finds it
        self._task = TaskState.start(request, Queues.for_agent_queue(workflow.info().task_queue))
        self._watchers = 0
        self._watch_answers = 0

    # --- queries -------------------------------------------------------------------------

    @workflow.query(name=durable.QUERY_STATUS)
    def status(self) -> TaskProgress:
        return self._task.progress()

    @workflow.query(name=durable.QUERY_PLAN)
    def plan(self) -> Plan | None:
        return self._task.plan

    @workflow.query(name=durable.QUERY_LEDGER)
    def ledger(self) -> Ledger:
        return self._task.book.ledger

    @workflow.query(name=durable.QUERY_PENDING)
    def pending(self) -> list[PendingRequest]:
        """What the task waits for a person to decide, oldest first."""
        return list(self._task.human.pending.values())

    # --- a person's decisions (Updates; the validators refuse without touching history) --

    @workflow.update(name=durable.UPDATE_APPROVE)
    def approve(self, approval: Approval) -> str:
        self._task.human.decide(approval.step_id, Decision(True, "", approval.by))
        by = f" by {approval.by}" if approval.by else ""
        self._task.event(f"{approval.step_id}: approved{by}")
        return f"approved {approval.step_id}"

    @approve.validator
    def _approve_pending(self, approval: Approval) -> None:
        self._task.human.check_approval(approval.step_id)

    @workflow.update(name=durable.UPDATE_REJECT)
    def reject(self, rejection: Rejection) -> str:
        decision = Decision(False, rejection.reason, rejection.by)
        self._task.human.decide(rejection.step_id, decision)
        self._task.event(f"{rejection.step_id}: rejected: {rejection.reason}")
        return f"rejected {rejection.step_id}"

    @reject.validator
    def _reject_pending(self, rejection: Rejection) -> None:
        self._task.human.check_approval(rejection.step_id)

    @workflow.update(name=durable.UPDATE_ANSWER)
    def answer(self, answer: HumanAnswer) -> str:
        question = self._task.human.question_id(answer.question_id)
        self._task.human.decide(question, Decision(True, answer.text, answer.by))
        self._task.event(f"{question}: answered")
        return f"answered {question}"

    @answer.validator
    def _answer_pending(self, answer: HumanAnswer) -> None:
        self._task.human.question_id(answer.question_id)

    # --- live progress: a long-polling Update (a watcher's call returns on news) ---------

    # Only a watcher that has seen every event so far is taken (it catches up with the
    # `status` query, which costs history nothing), so each answer carries news; and a run
    # gives at most MAX_WATCH_ANSWERS, so watchers can neither swell its history without end
    # nor use up the server's Updates per run that approvals and answers need. A run that
    # continues as new leaves its watchers' calls unanswered (abandoned, no warning): their
    # clients ask the next run (keel.client.watch_task).
    @workflow.update(
        name=durable.UPDATE_WATCH,
        unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON,
    )
    async def watch(self, request: WatchRequest) -> TaskProgress:
        self._watchers += 1
        try:
            await workflow.wait_condition(
                lambda: self._task.events_total > request.after or self._task.status.is_final
            )
        finally:
            self._watchers -= 1
        self._watch_answers += 1
        return self._task.progress()

    @watch.validator
    def _watch_room(self, request: WatchRequest) -> None:
        total = self._task.events_total
        if request.after > total:
            raise ValueError(
                f"after={request.after}: the task has had {total} events; give at most that"
            )
        if request.after < total:
            raise ApplicationError(
                f"after={request.after}: the task has had {total} events; read them with the "
                "`status` query, then watch from there",
                type=durable.WATCH_BEHIND,
                non_retryable=True,
            )
        if self._watchers >= MAX_WATCHERS or self._watch_answers >= MAX_WATCH_ANSWERS:
            raise ApplicationError(
                f"this run of the task takes no more watchers ({self._watchers} waiting, "
                f"{self._watch_answers} answered); read its progress with the `status` query",
                type=durable.WATCH_FULL,
                non_retryable=True,
            )

    # --- the task ------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: TaskRequest) -> TaskResult:
        if self._forged_carry:
            raise InvalidInput(
                "`carried` is set by Keel when a task continues as new; a caller may not send "
                "it: start the task without it"
            ).to_application_error()
        task = self._task
        metrics.task_started()
        task.lean = workflow.patched(LEAN_PATCH)
        user = sa.USER.value_set(request.user_id)
        if task.lean:
            task.attributes_due.append(user)  # upserted with the first status
        else:
            workflow.upsert_search_attributes([user])
        try:
            try:
                outcome = await self._work()
            except TimedOutWaiting as err:
                stopped = f"The task stopped waiting: {err}"
                outcome = Outcome(TaskStatus.TIMED_OUT_WAITING, str(err), stopped)
            if workflow.info().parent is None:  # a sub-agent's episode is its parent's
                await memory_calls.remember(task, outcome.answer, outcome.status)
            if workflow.patched(RELEASE_PATCH):
                await release_workspace(task)
        except asyncio.CancelledError:
            task.set_status(TaskStatus.CANCELLED, "cancelled; in-flight work stopped")
            cancelled = task.result(TaskStatus.CANCELLED, "", "cancelled")
            if workflow.info().parent is not None:
                return cancelled  # the parent books what a cancelled sub-agent spent from it
            metrics.task_ended(cancelled)
            await self._watchers_told()
            raise
        task.set_status(outcome.status, f"finished: {outcome.status.value}")
        result = task.result(outcome.status, outcome.answer, outcome.error)
        metrics.task_ended(result)
        await self._watchers_told()
        return result

    async def _watchers_told(self) -> None:
        """The task has ended: its watchers' calls return the final progress before the
        run closes (no commands: old histories replay through it unchanged)."""
        await workflow.wait_condition(lambda: self._watchers == 0)

    async def _work(self) -> Outcome:
        """Recall, then plan and execute (or react), then write the answer."""
        task = self._task
        recall = await memory_calls.recall(task)
        context = recall.context
        # what the answer may depend on besides the results: the user's facts and documents
        # (episodes and cache lines change with every task and would defeat the answer cache)
        if recall.knowledge is not None:  # a compact recall
            knowledge = recall.knowledge
        else:
            knowledge = [f.id for f in recall.facts] + [d.text for d in recall.documents]
        tools = await memory_calls.catalog(task)
        if task.request.strategy == "react":
            return await react(task, context, tools)
        outcome = await plan_and_execute(task, context, tools)
        if outcome.status != TaskStatus.COMPLETED:
            return Outcome(outcome.status, outcome.error, outcome.error or "")
        if outcome.answer:  # the plan wrote it
            return outcome
        try:
            return Outcome(TaskStatus.COMPLETED, answer=await synthesize(task, context, knowledge))
        except BudgetExhausted as err:
            answer = f"The budget ran out before the answer could be written: {err}"
            return Outcome(TaskStatus.BUDGET_EXHAUSTED, str(err), answer)
