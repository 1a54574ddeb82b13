"""The AgentTask workflow: recall, plan, validate, execute, re-plan, synthesize, remember.

Deterministic orchestration only: every side effect is an activity on its component's task
queue, and the budget is checked in here before each model or tool call.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel import search_attributes as sa
    from keel.contracts import (
        Ledger,
        LedgerEntry,
        ModelUsage,
        Plan,
        PlanRequest,
        PlanResponse,
        PlanStep,
        Recall,
        RecallRequest,
        RememberRequest,
        StepResult,
        StepStatus,
        Synthesis,
        SynthesisRequest,
        TaskProgress,
        TaskRequest,
        TaskResult,
        TaskStatus,
        ToolCall,
        ToolOutput,
        ToolSpec,
    )
    from keel.errors import BUDGET_EXCEEDED, INVALID_INPUT, INVALID_OUTPUT, TOOL_ERROR
    from keel.plans import budget_error, ready_steps, resolve_args, validate_plan
    from keel.queues import Queues

MODEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=3,
    non_retryable_error_types=[BUDGET_EXCEEDED, INVALID_INPUT],
)
MEMORY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)
NON_RETRYABLE_TOOL_ERRORS = [TOOL_ERROR, INVALID_OUTPUT, BUDGET_EXCEEDED, INVALID_INPUT]
MODEL_TIMEOUT = timedelta(minutes=5)
MEMORY_TIMEOUT = timedelta(seconds=60)
RECALL_LIMIT = 3
EVENTS_KEPT = 50


class _BudgetExhausted(Exception):
    pass


def _cause(err: ActivityError) -> ApplicationError | None:
    cause = err.cause
    return cause if isinstance(cause, ApplicationError) else None


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
        self._replans = 0

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

    # --- the task ------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: TaskRequest) -> TaskResult:
        queues = Queues.for_agent_queue(workflow.info().task_queue)
        self._ledger = Ledger(budget_usd=request.budget.usd, budget_tokens=request.budget.tokens)
        workflow.upsert_search_attributes([sa.USER.value_set(request.user_id)])

        self._set_status(TaskStatus.RECALLING, f"recalling memory of user {request.user_id}")
        recall = await workflow.execute_activity(
            "recall",
            RecallRequest(user_id=request.user_id, query=request.task, limit=RECALL_LIMIT),
            result_type=Recall,
            task_queue=queues.memory,
            start_to_close_timeout=MEMORY_TIMEOUT,
            retry_policy=MEMORY_RETRY,
            summary=f"recall: episodes of user {request.user_id}",
        )
        context = [f"earlier task: {e.task} -> {e.answer[:200]}" for e in recall.episodes]
        catalog = await workflow.execute_activity(
            "list_tools",
            result_type=list[ToolSpec],
            task_queue=queues.tools,
            start_to_close_timeout=MEMORY_TIMEOUT,
            retry_policy=MEMORY_RETRY,
            summary="list tools",
        )
        allowed = set(request.allowed_tools) if request.allowed_tools is not None else None
        tools = {t.name: t for t in catalog if allowed is None or t.name in allowed}

        status, error = await self._plan_and_execute(request, context, tools, queues)
        answer = error or ""
        if status == TaskStatus.COMPLETED:
            try:
                answer = await self._synthesize(request, context, queues)
            except _BudgetExhausted as err:
                status, error = TaskStatus.BUDGET_EXHAUSTED, str(err)
                answer = f"The budget ran out before the answer could be written: {err}"

        self._set_status(TaskStatus.REMEMBERING, "remembering the episode")
        await workflow.execute_activity(
            "remember",
            RememberRequest(
                workflow_id=workflow.info().workflow_id,
                user_id=request.user_id,
                task=request.task,
                answer=answer,
                status=status.value,
            ),
            task_queue=queues.memory,
            start_to_close_timeout=MEMORY_TIMEOUT,
            retry_policy=MEMORY_RETRY,
            summary=f"remember: episode ({status.value})",
        )
        self._set_status(status, f"finished: {status.value}")
        return TaskResult(
            workflow_id=workflow.info().workflow_id,
            status=status,
            answer=answer,
            steps=self._results,
            ledger=self._ledger,
            llm_calls=sum(e.kind == "model" for e in self._ledger.entries),
            replans=self._replans,
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
        failures: list[str] = []
        version = 0
        while True:
            version += 1
            if version > 1:
                self._replans += 1
            try:
                response = await self._call_planner(
                    request, context, tools, failures, version, queues
                )
            except _BudgetExhausted as err:
                return TaskStatus.BUDGET_EXHAUSTED, str(err)
            except ActivityError as err:
                return TaskStatus.FAILED, f"the planner failed: {err.cause or err}"
            plan = response.plan
            over_budget = False
            if plan is None:
                problem = f"plan v{version} was not usable: {response.error}"
            else:
                errors = validate_plan(plan, tools)
                money = budget_error(plan, self._remaining_usd())
                over_budget = money is not None and not errors
                if money:
                    errors.append(money)
                problem = f"plan v{version} is invalid: " + "; ".join(errors) if errors else ""
            if problem:
                failures.append(problem)
                self._event(problem)
                if version > request.max_replans:
                    final = TaskStatus.BUDGET_EXHAUSTED if over_budget else TaskStatus.FAILED
                    return final, problem
                continue

            assert plan is not None
            self._plan = plan
            self._set_status(
                TaskStatus.EXECUTING,
                f"plan v{version}: " + ", ".join(f"{s.id}={s.tool}" for s in plan.steps),
            )
            try:
                failed = await self._execute(plan, tools, queues)
            except _BudgetExhausted as err:
                return TaskStatus.BUDGET_EXHAUSTED, str(err)
            if not failed:
                return TaskStatus.COMPLETED, None
            failures.extend(failed)
            if version > request.max_replans:
                return TaskStatus.FAILED, "; ".join(failed)

    async def _call_planner(
        self,
        request: TaskRequest,
        context: list[str],
        tools: dict[str, ToolSpec],
        failures: list[str],
        version: int,
        queues: Queues,
    ) -> PlanResponse:
        self._set_status(TaskStatus.PLANNING, f"planning (v{version})")
        remaining = self._check_affordable("planning")
        try:
            response = await workflow.execute_activity(
                "plan",
                PlanRequest(
                    task=request.task,
                    context=context,
                    tools=list(tools.values()),
                    remaining_usd=remaining,
                    max_usd=remaining,
                    max_tokens=self._remaining_tokens(),
                    completed=self._results,
                    failures=failures,
                    version=version,
                ),
                result_type=PlanResponse,
                task_queue=queues.planner,
                start_to_close_timeout=MODEL_TIMEOUT,
                retry_policy=MODEL_RETRY,
                summary=f"plan v{version} (budget left ${remaining:.4f})",
            )
        except ActivityError as err:
            cause = _cause(err)
            if cause and cause.type == BUDGET_EXCEEDED:
                raise _BudgetExhausted(
                    f"planning does not fit the budget: {cause.message}"
                ) from None
            raise
        self._book_model(response.usage)
        return response

    async def _execute(self, plan: Plan, tools: dict[str, ToolSpec], queues: Queues) -> list[str]:
        """Run the plan in waves of ready steps; return the failures (empty on success)."""
        results: dict[str, StepResult] = {}
        done: set[str] = set()
        started: set[str] = set()
        while True:
            wave = ready_steps(plan, done, started)
            if not wave:
                break
            reserved = 0.0
            for step in wave:  # reserve the whole wave before starting any of it
                cost = tools[step.tool].cost_per_call_usd
                if cost > self._remaining_usd() - reserved + 1e-12:
                    raise _BudgetExhausted(
                        f"step {step.id} ({step.tool}) needs ${cost:.6f}; "
                        f"${self._remaining_usd() - reserved:.6f} is left"
                    )
                reserved += cost
                started.add(step.id)
            wave_results = await asyncio.gather(
                *(self._run_step(plan, s, tools[s.tool], results, queues) for s in wave)
            )
            failed = []
            for result in wave_results:
                results[result.step_id] = result
                self._results.append(result)
                if result.status == StepStatus.SUCCEEDED:
                    done.add(result.step_id)
                else:
                    failed.append(f"step {result.step_id} ({result.tool}) failed: {result.error}")
            self._publish_cost()
            if failed:
                return failed
        return []

    async def _run_step(
        self,
        plan: Plan,
        step: PlanStep,
        spec: ToolSpec,
        results: dict[str, StepResult],
        queues: Queues,
    ) -> StepResult:
        args = resolve_args(step.args, results)
        self._event(f"{step.id}: {spec.name}({_short(args)})")
        started = workflow.time()
        try:
            out = await workflow.execute_activity(
                f"tool.{spec.name}",
                ToolCall(
                    workflow_id=workflow.info().workflow_id,
                    step_id=f"v{plan.version}.{step.id}",
                    tool=spec.name,
                    args=args,
                    max_usd=spec.cost_per_call_usd,
                    max_tokens=self._remaining_tokens(),
                ),
                result_type=ToolOutput,
                task_queue=queues.name(spec.queue),
                start_to_close_timeout=timedelta(seconds=spec.timeout_s),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=200),
                    maximum_attempts=spec.max_attempts if spec.idempotent else 1,
                    non_retryable_error_types=NON_RETRYABLE_TOOL_ERRORS,
                ),
                summary=f"{spec.name}: {_short(args)} (${spec.cost_per_call_usd:.3f})",
            )
        except ActivityError as err:
            cause = _cause(err)
            message = cause.message if cause else str(err.cause or err)
            # A failed call is booked at its reservation: a paid API may bill failures too.
            self._book_tool(
                spec, step.id, spec.cost_per_call_usd, workflow.time() - started, ok=False
            )
            self._event(f"{step.id}: failed: {message}")
            return StepResult(
                step_id=step.id,
                plan_version=plan.version,
                tool=spec.name,
                args=args,
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
        return StepResult(
            step_id=step.id,
            plan_version=plan.version,
            tool=spec.name,
            args=args,
            status=StepStatus.SUCCEEDED,
            output=out.output,
            cost_usd=out.cost_usd,
            latency_ms=latency_ms,
        )

    async def _synthesize(self, request: TaskRequest, context: list[str], queues: Queues) -> str:
        self._set_status(TaskStatus.SYNTHESIZING, "writing the answer")
        remaining = self._check_affordable("writing the answer")
        try:
            synthesis = await workflow.execute_activity(
                "synthesize",
                SynthesisRequest(
                    task=request.task,
                    steps=self._results,
                    context=context,
                    max_usd=remaining,
                    max_tokens=self._remaining_tokens(),
                ),
                result_type=Synthesis,
                task_queue=queues.llm,
                start_to_close_timeout=MODEL_TIMEOUT,
                retry_policy=MODEL_RETRY,
                summary=f"synthesize: answer from {len(self._results)} step results",
            )
        except ActivityError as err:
            cause = _cause(err)
            if cause and cause.type == BUDGET_EXCEEDED:
                raise _BudgetExhausted(cause.message) from None
            raise
        self._book_model(synthesis.usage)
        return synthesis.answer

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
        workflow.upsert_search_attributes(
            [sa.STATUS.value_set(status.value), sa.COST_USD.value_set(self._ledger.total_usd)]
        )

    def _publish_cost(self) -> None:
        workflow.upsert_search_attributes([sa.COST_USD.value_set(self._ledger.total_usd)])
