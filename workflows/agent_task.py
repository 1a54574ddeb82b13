"""The AgentTask workflow: recall, plan, validate, execute, re-plan, synthesize, remember.

Deterministic orchestration only: every side effect is an activity on its component's task
queue, and the budget is checked in here before each model or tool call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ActivityCancellationType

from workflows.human import Decision, HumanDesk, TimedOutWaiting

with workflow.unsafe.imports_passed_through():
    from keel import search_attributes as sa
    from keel.conditions import ConditionError, parse_condition
    from keel.contracts import (
        Approval,
        Budget,
        CacheAnswer,
        CacheHit,
        CacheLookup,
        CacheStore,
        CarriedState,
        Extraction,
        ExtractionRequest,
        HumanAnswer,
        Ledger,
        LedgerEntry,
        ModelUsage,
        Notification,
        PendingKind,
        PendingRequest,
        Plan,
        PlanRequest,
        PlanResponse,
        PlanStep,
        ReactDecision,
        ReactRequest,
        Recall,
        RecallRequest,
        Rejection,
        Remembered,
        RememberRequest,
        SideEffects,
        StepResult,
        StepStatus,
        SubAgent,
        Synthesis,
        SynthesisRequest,
        TaskProgress,
        TaskRequest,
        TaskResult,
        TaskStatus,
        ToolCall,
        ToolOutput,
        ToolSpec,
        Triple,
    )
    from keel.errors import BUDGET_EXCEEDED, INVALID_INPUT, INVALID_OUTPUT, TOOL_ERROR
    from keel.plans import (
        MAX_STEPS,
        budget_error,
        output_text,
        ready_steps,
        resolve_args,
        validate_plan,
    )
    from keel.queues import Queues
    from keel.short_term import ShortTermMemory
    from keel.workflow_tools import ASK_HUMAN, DEFAULT_SUBAGENTS, subagent_spec

MODEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=3,
    non_retryable_error_types=[BUDGET_EXCEEDED, INVALID_INPUT],
)
MEMORY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)
NON_RETRYABLE_TOOL_ERRORS = [TOOL_ERROR, INVALID_OUTPUT, BUDGET_EXCEEDED, INVALID_INPUT]
MODEL_TIMEOUT = timedelta(minutes=5)
# Model calls heartbeat every second while they wait on the model (activities/heartbeat.py):
# a killed planner or llm worker costs this long, not MODEL_TIMEOUT.
MODEL_HEARTBEAT_TIMEOUT = timedelta(seconds=15)
MEMORY_TIMEOUT = timedelta(seconds=15)
CACHE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=2)
# With no memory worker polling, a cache call gives up after this and counts as a miss.
CACHE_DEADLINE = timedelta(seconds=30)
# Tools heartbeat about every second; a worker that dies mid-call is noticed after this.
TOOL_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
NOTIFY_TIMEOUT = timedelta(seconds=30)
RECALL_LIMIT = 3
EVENTS_KEPT = 50
# Continuing as new carries the last results (for the answer) and nothing older.
RESULTS_CARRIED = 20


_ModelResult = TypeVar("_ModelResult", PlanResponse, ReactDecision, Synthesis, Extraction)


class _BudgetExhausted(Exception):
    pass


def _cause(err: ActivityError) -> ApplicationError | None:
    cause = err.cause
    return cause if isinstance(cause, ApplicationError) else None


def _failure(result: StepResult) -> str:
    return f"step {result.step_id} ({result.tool}) failed: {result.error}"


def _cache_key(args: dict[str, object]) -> str:
    """What a cached call is looked up by: its one text argument, or all of them as JSON."""
    values = list(args.values())
    if len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return json.dumps(args, sort_keys=True, default=str)


_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|me|my|mine|we|our|us)\b", re.IGNORECASE)


def _short(args: dict[str, object], limit: int = 60) -> str:
    text = ", ".join(f"{v}" if len(args) == 1 else f"{k}={v}" for k, v in args.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@workflow.defn(name="AgentTask")
class AgentTask:
    def __init__(self) -> None:
        self._status = TaskStatus.RUNNING
        self._events: list[str] = []
        self._events_total = 0
        self._plan: Plan | None = None
        self._ledger = Ledger()
        self._results: list[StepResult] = []
        self._outputs: dict[str, StepResult] = {}  # succeeded steps by id, across plan versions
        self._replans = 0
        self._user_id = ""
        self._short_term = ShortTermMemory()
        self._carried_failures: list[str] = []
        self._first_version = 1
        self._runs = 1
        self._request: TaskRequest | None = None
        self._human = HumanDesk()
        self._subagents: dict[str, SubAgent] = {}
        self._steps_total = 0
        self._resume_plan: tuple[Plan, set[str], set[str]] | None = None  # plan, settled, skipped
        self._working_status = TaskStatus.RUNNING  # what to go back to after waiting

    # --- queries -------------------------------------------------------------------------

    @workflow.query
    def status(self) -> TaskProgress:
        return TaskProgress(
            status=self._status,
            events=self._events,
            events_total=self._events_total,
            steps_done=sum(r.status == StepStatus.SUCCEEDED for r in self._results),
            replans=self._replans,
            total_usd=self._ledger.total_usd,
        )

    @workflow.query
    def plan(self) -> Plan | None:
        return self._plan

    @workflow.query
    def ledger(self) -> Ledger:
        return self._ledger

    @workflow.query
    def pending(self) -> list[PendingRequest]:
        """What the task waits for a person to decide, oldest first."""
        return list(self._human.pending.values())

    # --- a person's decisions (Updates; the validators refuse without touching history) --

    @workflow.update
    def approve(self, approval: Approval) -> str:
        self._human.decide(approval.step_id, Decision(True, "", approval.by))
        self._event(f"{approval.step_id}: approved" + (f" by {approval.by}" if approval.by else ""))
        return f"approved {approval.step_id}"

    @approve.validator
    def _approve_pending(self, approval: Approval) -> None:
        self._human.check_approval(approval.step_id)

    @workflow.update
    def reject(self, rejection: Rejection) -> str:
        self._human.decide(rejection.step_id, Decision(False, rejection.reason, rejection.by))
        self._event(f"{rejection.step_id}: rejected: {rejection.reason}")
        return f"rejected {rejection.step_id}"

    @reject.validator
    def _reject_pending(self, rejection: Rejection) -> None:
        self._human.check_approval(rejection.step_id)

    @workflow.update
    def answer(self, answer: HumanAnswer) -> str:
        question = self._human.question_id(answer.question_id)
        self._human.decide(question, Decision(True, answer.text, answer.by))
        self._event(f"{question}: answered")
        return f"answered {question}"

    @answer.validator
    def _answer_pending(self, answer: HumanAnswer) -> None:
        self._human.question_id(answer.question_id)

    # --- the task ------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: TaskRequest) -> TaskResult:
        queues = Queues.for_agent_queue(workflow.info().task_queue)
        self._request = request
        self._user_id = request.user_id
        self._ledger = Ledger(budget_usd=request.budget.usd, budget_tokens=request.budget.tokens)
        if request.carried is not None:
            self._resume(request.carried)
        else:
            self._short_term.add(f"user asked: {request.task}")
        workflow.upsert_search_attributes([sa.USER.value_set(request.user_id)])
        try:
            try:
                status, error, answer = await self._work(request, queues)
            except TimedOutWaiting as err:
                error = str(err)
                status, answer = TaskStatus.TIMED_OUT_WAITING, f"The task stopped waiting: {err}"
            if workflow.info().parent is None:  # a sub-agent's episode is its parent's
                await self._remember(request, answer, status, queues)
        except asyncio.CancelledError:
            self._set_status(TaskStatus.CANCELLED, "cancelled; in-flight work stopped")
            if workflow.info().parent is not None:
                # the parent books what a cancelled sub-agent spent from this result
                return self._result(TaskStatus.CANCELLED, "", "cancelled")
            raise
        self._set_status(status, f"finished: {status.value}")
        return self._result(status, answer, error)

    async def _work(
        self, request: TaskRequest, queues: Queues
    ) -> tuple[TaskStatus, str | None, str]:
        """Recall, then plan and execute (or react), then write the answer."""
        self._set_status(TaskStatus.RECALLING, f"recalling memory of user {request.user_id}")
        recall = await workflow.execute_activity(
            "recall",
            RecallRequest(user_id=request.user_id, query=request.task, limit=RECALL_LIMIT),
            result_type=Recall,
            task_queue=queues.memory,
            start_to_close_timeout=MEMORY_TIMEOUT,
            retry_policy=MEMORY_RETRY,
            summary=f"recall: memory of user {request.user_id}",
        )
        context = recall.context
        # what the answer may depend on besides the results: the user's facts and documents
        # (episodes and cache lines change with every task and would defeat the answer cache)
        knowledge = [f.id for f in recall.facts] + [d.text for d in recall.documents]
        tools = await self._catalog(request, queues)

        if request.strategy == "react":
            return await self._react(request, context, tools, queues)
        status, error = await self._plan_and_execute(request, context, tools, queues)
        answer = error or ""
        if status == TaskStatus.COMPLETED:
            try:
                answer = await self._synthesize(request, context, knowledge, queues)
            except _BudgetExhausted as err:
                status, error = TaskStatus.BUDGET_EXHAUSTED, str(err)
                answer = f"The budget ran out before the answer could be written: {err}"
        return status, error, answer

    async def _catalog(self, request: TaskRequest, queues: Queues) -> dict[str, ToolSpec]:
        """The tool activities' catalog, plus what the workflow does itself: asking a person
        and the sub-agents (none inside a sub-agent: delegation is one level deep)."""
        catalog = await workflow.execute_activity(
            "list_tools",
            result_type=list[ToolSpec],
            task_queue=queues.tools,
            start_to_close_timeout=MEMORY_TIMEOUT,
            retry_policy=MEMORY_RETRY,
            summary="list tools",
        )
        agents = request.subagents if request.subagents is not None else DEFAULT_SUBAGENTS
        if workflow.info().parent is not None:
            agents = []
        self._subagents = {a.name: a for a in agents}
        specs = [*catalog, ASK_HUMAN, *(subagent_spec(a) for a in agents)]
        allowed = set(request.allowed_tools) if request.allowed_tools is not None else None
        return {t.name: t for t in specs if allowed is None or t.name in allowed}

    async def _remember(
        self, request: TaskRequest, answer: str, status: TaskStatus, queues: Queues
    ) -> None:
        self._set_status(TaskStatus.REMEMBERING, "remembering the episode")
        triples = await self._extract_facts(request, answer, queues)
        await workflow.execute_activity(
            "remember",
            RememberRequest(
                workflow_id=workflow.info().workflow_id,
                user_id=request.user_id,
                task=request.task,
                answer=answer,
                status=status.value,
                triples=triples,
                learned_at=workflow.now(),
            ),
            result_type=Remembered,
            task_queue=queues.memory,
            start_to_close_timeout=MEMORY_TIMEOUT,
            retry_policy=MEMORY_RETRY,
            summary=f"remember: episode ({status.value}) and {len(triples)} facts",
        )

    def _result(self, status: TaskStatus, answer: str, error: str | None) -> TaskResult:
        return TaskResult(
            workflow_id=workflow.info().workflow_id,
            status=status,
            answer=answer,
            steps=self._results,
            steps_total=self._steps_total,
            ledger=self._ledger,
            llm_calls=sum(
                e.calls
                for e in self._ledger.entries
                if e.kind == "model" and e.role != "memory" and not e.cached
            ),
            replans=self._replans,
            human_interventions=self._human.interventions,
            plan=self._plan,
            error=error,
        )

    async def _plan_and_execute(
        self,
        request: TaskRequest,
        context: list[str],
        tools: dict[str, ToolSpec],
        queues: Queues,
    ) -> tuple[TaskStatus, str | None]:
        failures = list(self._carried_failures)
        version = self._first_version - 1
        role = "planner"
        if self._resume_plan is not None:  # the previous run continued as new mid-plan
            carried_plan, settled, skipped = self._resume_plan
            version = carried_plan.version
            outcome = await self._run_plan(
                request, carried_plan, tools, failures, queues, settled, skipped
            )
            if outcome is not None:
                return outcome
        while True:
            version += 1
            if version > self._first_version and workflow.info().is_continue_as_new_suggested():
                self._continue_as_new(request, failures, version - 1)
            if version > 1:
                self._replans += 1
            try:
                response = await self._call_planner(
                    request, context, tools, failures, version, role, queues
                )
            except _BudgetExhausted as err:
                return TaskStatus.BUDGET_EXHAUSTED, str(err)
            except ActivityError as err:
                return TaskStatus.FAILED, f"the planner failed: {err.cause or err}"
            plan = response.plan
            over_budget = False
            rejection = ""
            if plan is None:
                problem = f"plan v{version} was not usable: {response.error}"
            else:
                errors = validate_plan(
                    plan, tools, done=self._outputs, max_steps=request.max_plan_steps or MAX_STEPS
                )
                money = budget_error(plan, self._remaining_usd())
                over_budget = money is not None and not errors
                if money:
                    errors.append(money)
                problem = f"plan v{version} is invalid: " + "; ".join(errors) if errors else ""
                if not problem:
                    rejection = problem = await self._approve_plan(request, plan)
            if problem:
                failures.append(problem)
                self._short_term.add(problem)
                self._event(problem)
                if version > request.max_replans:
                    final = TaskStatus.BUDGET_EXHAUSTED if over_budget else TaskStatus.FAILED
                    return final, problem
                # The small model could not produce a valid plan: a larger one tries next
                # (a plan a person rejected was valid: the same planner tries again).
                role = "planner" if rejection else "escalation"
                continue
            role = "planner"
            assert plan is not None
            outcome = await self._run_plan(request, plan, tools, failures, queues)
            if outcome is not None:
                return outcome

    async def _approve_plan(self, request: TaskRequest, plan: Plan) -> str:
        """A plan expected to cost more than the task's threshold waits for a person's
        approval of step 'plan'; returns why it may not run, or '' when it may."""
        threshold = request.human.approve_plans_above_usd
        cost = plan.expected_cost_usd + plan.synthesis_estimate_usd
        if threshold is None or cost <= threshold:
            return ""
        steps = ", ".join(f"{s.id}={s.tool}({_short(s.args, 40)})" for s in plan.steps)
        decision = await self._ask(
            PendingKind.APPROVAL,
            "plan",
            f"plan v{plan.version}, expected ${cost:.4f} (over ${threshold:g}): {steps}",
            cost,
        )
        if decision.approved:
            return ""
        return f"plan v{plan.version} was rejected by {decision.by or 'a person'}: {decision.text}"

    async def _run_plan(
        self,
        request: TaskRequest,
        plan: Plan,
        tools: dict[str, ToolSpec],
        failures: list[str],
        queues: Queues,
        settled: set[str] | None = None,
        skipped: set[str] | None = None,
    ) -> tuple[TaskStatus, str | None] | None:
        """Execute one plan; the task's outcome, or None when it must be re-planned."""
        self._plan = plan
        self._set_status(
            TaskStatus.EXECUTING,
            f"plan v{plan.version} by {plan.model}: "
            + ", ".join(f"{s.id}={s.tool}" + (" (if)" if s.when else "") for s in plan.steps[:20])
            + (f", … ({len(plan.steps)} steps)" if len(plan.steps) > 20 else ""),
        )
        try:
            failed = await self._execute(request, plan, tools, failures, queues, settled, skipped)
        except _BudgetExhausted as err:
            return TaskStatus.BUDGET_EXHAUSTED, str(err)
        if not failed:
            return TaskStatus.COMPLETED, None
        failures.extend(failed)
        if plan.version > request.max_replans:
            return TaskStatus.FAILED, "; ".join(failed)
        return None

    async def _call_planner(
        self,
        request: TaskRequest,
        context: list[str],
        tools: dict[str, ToolSpec],
        failures: list[str],
        version: int,
        role: str,
        queues: Queues,
    ) -> PlanResponse:
        self._set_status(TaskStatus.PLANNING, f"planning (v{version}, {role})")
        remaining = self._check_affordable("planning")
        response = await self._model_activity(
            "plan",
            PlanRequest(
                task=request.task,
                role=role,
                context=context + self._short_term.recap(),  # what left the window
                tools=list(tools.values()),
                remaining_usd=remaining,
                max_usd=remaining,
                max_tokens=self._remaining_tokens(),
                completed=self._results,
                failures=failures,
                version=version,
                max_steps=request.max_plan_steps,
            ),
            PlanResponse,
            queues.planner,
            summary=f"plan v{version} by the {role} (budget left ${remaining:.4f})",
            refusal="planning does not fit the budget",
        )
        self._book_model(response.usage)
        return response

    async def _execute(
        self,
        request: TaskRequest,
        plan: Plan,
        tools: dict[str, ToolSpec],
        failures_so_far: list[str],
        queues: Queues,
        settled_before: set[str] | None = None,
        skipped_before: set[str] | None = None,
    ) -> list[str]:
        """Run the plan: each step starts as soon as its dependencies have settled, so
        independent steps run in parallel. Returns the failures (empty on success).

        After a failure no new step starts; steps already running finish, so their results
        reach the re-plan instead of being paid for and thrown away. When Temporal suggests
        continuing as new, no new step starts either, and once the running ones have
        settled the task continues as new where it stands.
        """
        # steps done by earlier plan versions (or by this plan in the previous run) count
        settled: set[str] = set(self._outputs) | (settled_before or set())
        skipped: set[str] = set(skipped_before or set())
        started: set[str] = set(settled)
        running: dict[str, asyncio.Task[StepResult]] = {}
        reserved: dict[str, float] = {}
        failures: list[str] = []
        out_of_budget: str | None = None
        progressed = False
        try:
            while True:
                pause = (
                    progressed
                    and len(settled & {s.id for s in plan.steps}) < len(plan.steps)
                    and workflow.info().is_continue_as_new_suggested()
                )
                if not failures and out_of_budget is None and not pause:
                    for step in ready_steps(plan, settled, started):
                        started.add(step.id)
                        gate = self._gate(plan.version, step, tools[step.tool], skipped)
                        if gate is not None:
                            self._record(gate)
                            settled.add(step.id)
                            if gate.status == StepStatus.SKIPPED:
                                skipped.add(step.id)
                            elif gate.status == StepStatus.FAILED:
                                failures.append(_failure(gate))
                                break
                            continue
                        cost = tools[step.tool].cost_per_call_usd
                        left = self._remaining_usd() - sum(reserved.values())
                        if cost > left + 1e-12:
                            out_of_budget = (
                                f"step {step.id} ({step.tool}) needs ${cost:.6f}; "
                                f"${left:.6f} is left"
                            )
                            break
                        reserved[step.id] = cost
                        running[step.id] = asyncio.ensure_future(
                            self._run_step(plan.version, step, tools[step.tool], queues)
                        )
                if not running:
                    if pause and not failures and out_of_budget is None:
                        self._continue_as_new(
                            request, failures_so_far, plan.version, (plan, settled, skipped)
                        )
                    break
                await workflow.wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
                for step_id in [i for i, t in running.items() if t.done()]:  # replay-safe order
                    result = running.pop(step_id).result()
                    reserved.pop(step_id)
                    self._record(result)
                    settled.add(step_id)
                    progressed = True
                    if result.status == StepStatus.FAILED:
                        failures.append(_failure(result))
                self._publish_cost()
        except (Exception, asyncio.CancelledError):  # not GeneratorExit: evicted from cache
            # cancelled, or a wait for a person gave up: stop the other steps (their tool
            # activities are cancelled and their reservations booked) before going on
            for task in running.values():
                task.cancel()
            for stopped in await asyncio.gather(*running.values(), return_exceptions=True):
                if isinstance(stopped, StepResult):
                    self._record(stopped)
            raise
        if out_of_budget is not None and not failures:
            raise _BudgetExhausted(out_of_budget)
        return failures

    def _gate(
        self, version: int, step: PlanStep, spec: ToolSpec, skipped: set[str]
    ) -> StepResult | None:
        """The result of a step that needs no call (skipped, reused, or a broken condition),
        or None when the step must run."""

        def settle(
            status: StepStatus, note: str, output: dict[str, object] | None = None
        ) -> StepResult:
            self._event(f"{step.id}: {status.value}: {note}")
            return StepResult(
                step_id=step.id,
                plan_version=version,
                tool=step.tool,
                args=step.args,
                status=status,
                output=output,
                error=None if status == StepStatus.SUCCEEDED else note,
            )

        gone = [d for d in step.depends_on if d in skipped]
        if gone:
            return settle(StepStatus.SKIPPED, f"it depends on skipped step {gone[0]}")
        if step.when is not None:
            outputs = {i: r.output for i, r in self._outputs.items()}
            try:
                holds = parse_condition(step.when).evaluate(outputs)
            except ConditionError as err:
                return settle(StepStatus.FAILED, f"condition {step.when!r} failed: {err}")
            if not holds:
                return settle(StepStatus.SKIPPED, f"condition {step.when!r} is false")
            self._event(f"{step.id}: condition {step.when!r} holds")
        if spec.side_effects in (SideEffects.NONE, SideEffects.READ):
            args = resolve_args(step.args, self._outputs)
            for earlier in self._outputs.values():
                if earlier.tool == step.tool and earlier.args == args:
                    # A re-plan that repeats finished read-only work gets the result again,
                    # free: only the remaining work is paid for.
                    return settle(
                        StepStatus.SUCCEEDED,
                        f"reused the result of v{earlier.plan_version}.{earlier.step_id}",
                        output=earlier.output,
                    )
        return None

    def _record(self, result: StepResult) -> None:
        self._results.append(result)
        self._steps_total += 1
        outcome = (
            output_text(result)[:200] if result.status == StepStatus.SUCCEEDED else result.error
        )
        call = f"{result.step_id} {result.tool}({_short(result.args)})"
        self._short_term.add(f"{call} {result.status.value}: {outcome}")
        if result.status == StepStatus.SUCCEEDED:
            self._outputs[result.step_id] = result

    async def _run_step(
        self, version: int, step: PlanStep, spec: ToolSpec, queues: Queues
    ) -> StepResult:
        args = resolve_args(step.args, self._outputs)
        self._event(f"{step.id}: {spec.name}({_short(args)})")
        started = workflow.time()
        call: dict[str, Any] = {
            "step_id": step.id,
            "plan_version": version,
            "tool": spec.name,
            "args": args,
        }
        if spec.runs_as == "human":
            decision = await self._ask(PendingKind.QUESTION, step.id, str(args["question"]))
            return StepResult(**call, status=StepStatus.SUCCEEDED, output={"answer": decision.text})
        if spec.requires_approval:
            decision = await self._ask(
                PendingKind.APPROVAL,
                step.id,
                f"{spec.name}({_short(args)})",
                spec.cost_per_call_usd,
            )
            if not decision.approved:
                error = f"rejected by {decision.by or 'a person'}: {decision.text}"
                return StepResult(**call, status=StepStatus.FAILED, error=error)
            started = workflow.time()  # the wait for a person is not the tool's latency
        if spec.runs_as == "subagent":
            return await self._delegate(version, step, spec, call)
        cache_kind = f"tool.{spec.name}"
        if spec.cache is not None:
            hit = await self._cache_lookup(
                cache_kind, _cache_key(args), spec.cache.per_user, spec.cache.semantic, queues
            )
            if hit is not None:
                self._book_cached("tool", spec.name, step.id)
                return StepResult(
                    **call,
                    status=StepStatus.SUCCEEDED,
                    output=hit.value,
                    latency_ms=(workflow.time() - started) * 1000,
                    cached=True,
                )
        try:
            queue = spec.activity_queue(args)
        except ValueError as err:
            self._event(f"{step.id}: failed: {err}")
            return StepResult(
                **call,
                status=StepStatus.FAILED,
                error=str(err),
                latency_ms=(workflow.time() - started) * 1000,
            )
        try:
            out = await workflow.execute_activity(
                f"tool.{spec.name}",
                ToolCall(
                    workflow_id=workflow.info().workflow_id,
                    step_id=f"v{version}.{step.id}",
                    tool=spec.name,
                    args=args,
                    max_usd=spec.cost_per_call_usd,
                    max_tokens=self._remaining_tokens(),
                ),
                result_type=ToolOutput,
                task_queue=queues.name(queue),
                start_to_close_timeout=timedelta(seconds=spec.timeout_s),
                heartbeat_timeout=TOOL_HEARTBEAT_TIMEOUT,
                # a cancelled task waits until its tools have really stopped
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=200),
                    maximum_attempts=spec.max_attempts if spec.idempotent else 1,
                    non_retryable_error_types=NON_RETRYABLE_TOOL_ERRORS,
                ),
                summary=f"{spec.name}: {_short(args)} (${spec.cost_per_call_usd:.3f})",
            )
        except asyncio.CancelledError:
            # the call stopped half way: booked at its reservation, like a failure
            self._book_tool(
                spec, step.id, spec.cost_per_call_usd, workflow.time() - started, ok=False
            )
            self._event(f"{step.id}: cancelled")
            raise
        except ActivityError as err:
            cause = _cause(err)
            message = cause.message if cause else str(err.cause or err)
            # A failed call is booked at its reservation: a paid API may bill failures too.
            self._book_tool(
                spec, step.id, spec.cost_per_call_usd, workflow.time() - started, ok=False
            )
            self._event(f"{step.id}: failed: {message}")
            return StepResult(
                **call,
                status=StepStatus.FAILED,
                error=message,
                cost_usd=spec.cost_per_call_usd,
            )
        for usage in out.usage:
            self._book_model(usage, step.id)
        tool_usd = out.cost_usd - sum(u.usd for u in out.usage)
        latency_ms = (workflow.time() - started) * 1000
        self._book_tool(spec, step.id, tool_usd, latency_ms / 1000, ok=True)
        self._event(f"{step.id}: done")
        if spec.cache is not None:
            await self._cache_store(
                CacheStore(
                    kind=cache_kind,
                    key=_cache_key(args),
                    user_id=self._user_id if spec.cache.per_user else None,
                    value=out.output,
                    semantic=spec.cache.semantic,
                    ttl_s=spec.cache.ttl_s,
                    source=f"{workflow.info().workflow_id}/v{version}.{step.id}",
                ),
                queues,
            )
        return StepResult(
            **call,
            status=StepStatus.SUCCEEDED,
            output=out.output,
            cost_usd=out.cost_usd,
            latency_ms=latency_ms,
        )

    async def _react(
        self,
        request: TaskRequest,
        context: list[str],
        tools: dict[str, ToolSpec],
        queues: Queues,
    ) -> tuple[TaskStatus, str | None, str]:
        """The naive baseline the article argues against: one model call per step, each
        re-reading the whole history, until the model answers or runs out of steps."""
        history: list[StepResult] = []
        unusable = 0
        for turn in range(1, request.max_steps + 2):
            self._set_status(TaskStatus.PLANNING, f"react turn {turn}")
            try:
                remaining = self._check_affordable(f"react turn {turn}")
                decision = await self._react_turn(
                    request, context, tools, history, remaining, queues
                )
            except _BudgetExhausted as err:
                return TaskStatus.BUDGET_EXHAUSTED, str(err), ""
            except ActivityError as err:
                return TaskStatus.FAILED, f"the model failed: {err.cause or err}", ""
            self._book_model(decision.usage)
            if decision.error is not None:
                unusable += 1
                self._event(f"react turn {turn}: unusable output: {decision.error}")
                if unusable > request.max_replans:
                    return TaskStatus.FAILED, decision.error, ""
                continue
            if decision.tool is None:
                return TaskStatus.COMPLETED, None, (decision.answer or "").strip()
            if turn > request.max_steps:
                break
            step = PlanStep(id=f"r{turn}", tool=decision.tool, args=decision.args)
            problems = validate_plan(Plan(version=0, steps=[step]), tools)
            spec = tools.get(decision.tool)
            if problems or spec is None:
                result = StepResult(
                    step_id=step.id,
                    plan_version=0,
                    tool=decision.tool,
                    args=decision.args,
                    status=StepStatus.FAILED,
                    error="; ".join(problems),
                )
                self._event(f"{step.id}: refused: {result.error}")
            elif spec.cost_per_call_usd > self._remaining_usd() + 1e-12:
                return TaskStatus.BUDGET_EXHAUSTED, f"step {step.id} does not fit the budget", ""
            else:
                self._set_status(TaskStatus.EXECUTING, f"react turn {turn}: {spec.name}")
                result = await self._run_step(0, step, spec, queues)
            history.append(result)
            self._record(result)
            self._publish_cost()
        return TaskStatus.FAILED, f"no answer after {request.max_steps} tool calls", ""

    async def _react_turn(
        self,
        request: TaskRequest,
        context: list[str],
        tools: dict[str, ToolSpec],
        history: list[StepResult],
        remaining: float,
        queues: Queues,
    ) -> ReactDecision:
        return await self._model_activity(
            "react_step",
            ReactRequest(
                task=request.task,
                context=context,
                tools=list(tools.values()),
                history=history,
                remaining_usd=remaining,
                max_usd=remaining,
                max_tokens=self._remaining_tokens(),
                steps_left=request.max_steps - len(history),
            ),
            ReactDecision,
            queues.planner,
            summary=f"react: next action after {len(history)} observations",
            refusal="the next turn does not fit",
        )

    async def _synthesize(
        self, request: TaskRequest, context: list[str], knowledge: list[str], queues: Queues
    ) -> str:
        self._set_status(TaskStatus.SYNTHESIZING, "writing the answer")
        # The same task over the same results and knowledge has the same answer: exact, per
        # user, looked up by a digest (the results themselves need not travel twice).
        key = hashlib.sha256(
            json.dumps(
                [request.task, knowledge]
                + [
                    [r.tool, r.args, r.output]
                    for r in self._results
                    if r.status == StepStatus.SUCCEEDED
                ],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        hit = await self._cache_lookup("synthesize", key, True, False, queues)
        if hit is not None and isinstance(hit.value.get("answer"), str):
            self._book_cached("model", "synthesize")
            return str(hit.value["answer"])
        remaining = self._check_affordable("writing the answer")
        synthesis = await self._model_activity(
            "synthesize",
            SynthesisRequest(
                task=request.task,
                steps=self._results,
                context=context,
                max_usd=remaining,
                max_tokens=self._remaining_tokens(),
            ),
            Synthesis,
            queues.llm,
            summary=f"synthesize: answer from {len(self._results)} step results",
            refusal="the answer does not fit the budget",
        )
        self._book_model(synthesis.usage)
        await self._cache_store(
            CacheStore(
                kind="synthesize",
                key=key,
                user_id=self._user_id,
                value={"answer": synthesis.answer},
                semantic=False,
                source=f"{workflow.info().workflow_id}/synthesize",
            ),
            queues,
        )
        return synthesis.answer

    def _resume(self, carried: CarriedState) -> None:
        """Pick up where the previous run stopped when it continued as new."""
        self._short_term = carried.short_term
        self._ledger = carried.ledger
        self._results = list(carried.results)
        for result in [*carried.outputs, *carried.results]:
            if result.status == StepStatus.SUCCEEDED:
                self._outputs[result.step_id] = result
        self._steps_total = carried.steps_total
        self._human.interventions = carried.human_interventions
        self._carried_failures = carried.failures
        self._replans = carried.replans
        self._first_version = carried.plan_version + 1
        self._runs = carried.runs + 1
        if carried.plan is not None:
            self._resume_plan = (carried.plan, set(carried.settled), set(carried.skipped))
        self._event(f"continued as new (run {self._runs}), {carried.steps_total} steps done before")

    def _continue_as_new(
        self,
        request: TaskRequest,
        failures: list[str],
        version: int,
        progress: tuple[Plan, set[str], set[str]] | None = None,
    ) -> None:
        """History is getting long: start a fresh run with compact state (Temporal suggests
        this well before its limits). It carries the ledger summed per model and tool, the
        short-term summary, the last results, and, in the middle of a plan, only the steps
        still to run with the settled steps and outputs they depend on."""
        self._event(f"continuing as new after {self._steps_total} steps (plan v{version})")
        plan: Plan | None = None
        settled: set[str] = set()
        skipped: set[str] = set()
        if progress is not None:
            full, done, gone = progress
            left = [s for s in full.steps if s.id not in done]
            needed = {d for s in left for d in s.depends_on}
            plan = full.model_copy(update={"steps": left})
            settled, skipped = done & needed, gone & needed
        else:
            needed = set()
        carried = CarriedState(
            short_term=self._short_term.carried(),
            ledger=self._ledger.compacted(),
            results=self._results[-RESULTS_CARRIED:],
            outputs=[r for i, r in self._outputs.items() if i in needed],
            failures=failures[-RESULTS_CARRIED:],
            replans=self._replans,
            plan_version=version,
            runs=self._runs,
            steps_total=self._steps_total,
            human_interventions=self._human.interventions,
            plan=plan,
            settled=sorted(settled),
            skipped=sorted(skipped),
        )
        workflow.continue_as_new(request.model_copy(update={"carried": carried}))

    # --- people and sub-agents -----------------------------------------------------------

    async def _ask(
        self, kind: PendingKind, request_id: str, text: str, cost_usd: float = 0.0
    ) -> Decision:
        """Wait for a person to decide (an approval) or answer (a question)."""
        assert self._request is not None
        pending = PendingRequest(
            kind=kind, id=request_id, text=text, expected_cost_usd=cost_usd, asked_at=workflow.now()
        )
        if not self._status.is_waiting:
            self._working_status = self._status
        self._human.open(pending)
        self._show_waiting()
        # a wait that ends otherwise (cancelled, timed out) ends the task, which says so
        decision = await self._human.wait(pending, self._request.human, self._escalate)
        self._show_waiting()
        return decision

    def _show_waiting(self) -> None:
        kind = self._human.waiting_for()
        ids = ", ".join(self._human.pending)
        if kind == PendingKind.APPROVAL:
            self._set_status(TaskStatus.AWAITING_APPROVAL, f"waiting for approval: {ids}")
        elif kind == PendingKind.QUESTION:
            self._set_status(TaskStatus.AWAITING_ANSWER, f"waiting for an answer: {ids}")
        elif self._status.is_waiting:
            self._set_status(self._working_status, "a person decided; going on")

    async def _escalate(self, pending: PendingRequest, waited_s: float) -> None:
        """Nobody decided in time: tell someone (then the task keeps waiting)."""
        self._event(f"{pending.id}: no decision after {waited_s:g} s; escalating")
        try:
            await workflow.execute_activity(
                "notify_human",
                Notification(
                    workflow_id=workflow.info().workflow_id,
                    user_id=self._user_id,
                    kind=pending.kind,
                    id=pending.id,
                    text=pending.text,
                    waited_s=waited_s,
                ),
                task_queue=workflow.info().task_queue,
                start_to_close_timeout=NOTIFY_TIMEOUT,
                retry_policy=MEMORY_RETRY,
                summary=f"notify: {pending.kind.value} {pending.id} waited {waited_s:g} s",
            )
        except ActivityError as err:
            self._event(f"{pending.id}: the notification failed: {err.cause or err}")

    async def _delegate(
        self, version: int, step: PlanStep, spec: ToolSpec, call: dict[str, Any]
    ) -> StepResult:
        """Run the step as a child AgentTask of the named sub-agent, with its own tools and
        the step's reservation as its budget; its whole spend is booked here."""
        assert self._request is not None
        agent = self._subagents[spec.name]
        task = str(call["args"]["task"])
        tokens = self._remaining_tokens()
        budget = Budget(
            usd=min(agent.budget_usd, self._remaining_usd()),
            tokens=None if tokens is None else max(1, tokens),
        )
        child = TaskRequest(
            task=task,
            user_id=self._user_id,
            budget=budget,
            max_replans=self._request.max_replans,
            allowed_tools=agent.tools,
            human=self._request.human,
            subagents=[],
        )
        started = workflow.time()
        try:
            result: TaskResult = await workflow.execute_child_workflow(
                "AgentTask",
                child,
                id=f"{workflow.info().workflow_id}.{agent.name}.v{version}.{step.id}",
                task_queue=workflow.info().task_queue,
                result_type=TaskResult,
                search_attributes=sa.initial(self._user_id),
                memo=sa.memo(child),
                static_summary=f"{agent.name}: {task[:100]} (budget ${budget.usd:g})",
            )
        except (ChildWorkflowError, asyncio.CancelledError) as err:
            # how much it spent is unknown: booked at its whole slice
            self._book_agent(agent.name, step.id, Ledger(), budget.usd, workflow.time() - started)
            if isinstance(err, asyncio.CancelledError):
                raise
            error = f"sub-agent {agent.name} failed: {err.cause or err}"
            self._event(f"{step.id}: {error}")
            return StepResult(**call, status=StepStatus.FAILED, error=error, cost_usd=budget.usd)
        self._book_agent(agent.name, step.id, result.ledger, None, workflow.time() - started)
        self._human.interventions += result.human_interventions
        spent = result.ledger.total_usd
        if result.status != TaskStatus.COMPLETED:
            error = f"sub-agent {agent.name} ended {result.status.value}: {result.error}"
            self._event(f"{step.id}: {error}")
            return StepResult(**call, status=StepStatus.FAILED, error=error, cost_usd=spent)
        self._event(f"{step.id}: {agent.name} answered (${spent:.4f})")
        return StepResult(
            **call,
            status=StepStatus.SUCCEEDED,
            output={"answer": result.answer, "status": result.status.value},
            cost_usd=spent,
            latency_ms=(workflow.time() - started) * 1000,
        )

    # --- memory --------------------------------------------------------------------------

    async def _cache_lookup(
        self, kind: str, key: str, per_user: bool, semantic: bool, queues: Queues
    ) -> CacheHit | None:
        """A cache miss when the memory worker cannot answer: the cache only saves money."""
        try:
            answer = await workflow.execute_activity(
                "cache_lookup",
                CacheLookup(
                    kind=kind,
                    key=key,
                    user_id=self._user_id if per_user else None,
                    semantic=semantic,
                ),
                result_type=CacheAnswer,
                task_queue=queues.memory,
                start_to_close_timeout=MEMORY_TIMEOUT,
                schedule_to_close_timeout=CACHE_DEADLINE,
                retry_policy=CACHE_RETRY,
                summary=f"cache lookup: {kind}",
            )
        except ActivityError as err:
            self._event(f"cache lookup failed, calling instead: {err.cause or err}")
            return None
        if answer.hit is not None:
            how = "exact" if answer.hit.exact else f"{answer.hit.score:.2f} similar"
            self._event(f"{kind}: answered from the cache ({how})")
        return answer.hit

    async def _cache_store(self, entry: CacheStore, queues: Queues) -> None:
        try:
            await workflow.execute_activity(
                "cache_store",
                entry,
                task_queue=queues.memory,
                start_to_close_timeout=MEMORY_TIMEOUT,
                schedule_to_close_timeout=CACHE_DEADLINE,
                retry_policy=CACHE_RETRY,
                summary=f"cache store: {entry.kind}",
            )
        except ActivityError as err:
            self._event(f"cache store failed (the result stands): {err.cause or err}")

    async def _extract_facts(
        self, request: TaskRequest, answer: str, queues: Queues
    ) -> list[Triple]:
        """Facts worth keeping, by the small model; none when the budget is spent or the
        model fails: the task's result never depends on its memory upkeep. A task that says
        nothing about its user ("I", "my", "we", ...) is not sent: the call would cost
        money to find nothing personal."""
        remaining = self._remaining_usd()
        if remaining <= 0 or self._remaining_tokens() == 0:
            return []
        if not _FIRST_PERSON.search(request.task):
            return []
        try:
            extraction = await self._model_activity(
                "extract_facts",
                ExtractionRequest(
                    task=request.task,
                    answer=answer,
                    max_usd=remaining,
                    max_tokens=self._remaining_tokens(),
                ),
                Extraction,
                queues.planner,
                summary="extract facts for memory",
                refusal="no budget left to extract facts",
            )
        except (_BudgetExhausted, ActivityError) as err:
            self._event(f"no facts extracted: {err}")
            return []
        if extraction.usage is not None:
            self._book_model(extraction.usage)
        if extraction.error is not None:
            self._event(f"no facts extracted: {extraction.error}")
        return extraction.triples

    async def _model_activity(
        self,
        name: str,
        arg: object,
        result_type: type[_ModelResult],
        queue: str,
        summary: str,
        refusal: str,
    ) -> _ModelResult:
        """A model-backed activity; its refusal to exceed its allowance ends the task as
        out of budget instead of failing it."""
        try:
            return await workflow.execute_activity(
                name,
                arg,
                result_type=result_type,
                task_queue=queue,
                start_to_close_timeout=MODEL_TIMEOUT,
                heartbeat_timeout=MODEL_HEARTBEAT_TIMEOUT,
                retry_policy=MODEL_RETRY,
                summary=summary,
            )
        except ActivityError as err:
            cause = _cause(err)
            if cause and cause.type == BUDGET_EXCEEDED:
                raise _BudgetExhausted(f"{refusal}: {cause.message}") from None
            raise

    # --- budget and ledger ---------------------------------------------------------------

    def _remaining_usd(self) -> float:
        return max(0.0, self._ledger.budget_usd - self._ledger.total_usd)

    def _remaining_tokens(self) -> int | None:
        if self._ledger.budget_tokens is None:
            return None
        return max(0, self._ledger.budget_tokens - self._ledger.total_tokens)

    def _check_affordable(self, what: str) -> float:
        remaining = self._remaining_usd()
        tokens = self._remaining_tokens()
        if remaining <= 0 or tokens == 0:
            raise _BudgetExhausted(f"nothing is left of the budget for {what}")
        return remaining

    def _book_model(self, usage: ModelUsage, step_id: str | None = None) -> None:
        self._ledger.entries.append(
            LedgerEntry(
                kind="model",
                name=usage.model,
                role=usage.role,
                step_id=step_id,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                usd=usage.usd,
                latency_ms=usage.latency_ms,
            )
        )

    def _book_cached(
        self, kind: Literal["model", "tool"], name: str, step_id: str | None = None
    ) -> None:
        self._ledger.entries.append(
            LedgerEntry(kind=kind, name=name, step_id=step_id, usd=0.0, cached=True)
        )

    def _book_agent(
        self, name: str, step_id: str, ledger: Ledger, usd: float | None, seconds: float
    ) -> None:
        """One entry for a sub-agent's whole spend (its own ledger has the details)."""
        self._ledger.entries.append(
            LedgerEntry(
                kind="agent",
                name=name,
                step_id=step_id,
                input_tokens=sum(e.input_tokens for e in ledger.entries),
                output_tokens=sum(e.output_tokens for e in ledger.entries),
                usd=ledger.total_usd if usd is None else usd,
                latency_ms=seconds * 1000,
            )
        )

    def _book_tool(
        self, spec: ToolSpec, step_id: str, usd: float, seconds: float, ok: bool
    ) -> None:
        self._ledger.entries.append(
            LedgerEntry(
                kind="tool",
                name=spec.name,
                step_id=step_id,
                usd=usd,
                latency_ms=seconds * 1000,
                ok=ok,
            )
        )

    # --- status and the UI ---------------------------------------------------------------

    def _event(self, text: str) -> None:
        self._events.append(text)
        self._events_total += 1
        del self._events[:-EVENTS_KEPT]
        workflow.logger.info(text, extra={"keel_status": self._status.value})

    def _set_status(self, status: TaskStatus, event: str) -> None:
        self._status = status
        self._event(event)
        updates: list[SearchAttributeUpdate[Any]] = [
            sa.STATUS.value_set(status.value),
            sa.COST_USD.value_set(self._ledger.total_usd),
        ]
        if status.is_final:  # the completion-rate metric: done with no person stepping in
            without_human = status == TaskStatus.COMPLETED and self._human.interventions == 0
            updates.append(sa.WITHOUT_HUMAN.value_set(without_human))
        workflow.upsert_search_attributes(updates)

    def _publish_cost(self) -> None:
        workflow.upsert_search_attributes([sa.COST_USD.value_set(self._ledger.total_usd)])
