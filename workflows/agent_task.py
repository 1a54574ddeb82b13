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
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel import search_attributes as sa
    from keel.conditions import ConditionError, parse_condition
    from keel.contracts import (
        CacheAnswer,
        CacheHit,
        CacheLookup,
        CacheStore,
        CarriedState,
        Extraction,
        ExtractionRequest,
        Ledger,
        LedgerEntry,
        ModelUsage,
        Plan,
        PlanRequest,
        PlanResponse,
        PlanStep,
        ReactDecision,
        ReactRequest,
        Recall,
        RecallRequest,
        Remembered,
        RememberRequest,
        SideEffects,
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
        Triple,
    )
    from keel.errors import BUDGET_EXCEEDED, INVALID_INPUT, INVALID_OUTPUT, TOOL_ERROR
    from keel.plans import budget_error, output_text, ready_steps, resolve_args, validate_plan
    from keel.queues import Queues
    from keel.short_term import ShortTermMemory

MODEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=3,
    non_retryable_error_types=[BUDGET_EXCEEDED, INVALID_INPUT],
)
MEMORY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)
NON_RETRYABLE_TOOL_ERRORS = [TOOL_ERROR, INVALID_OUTPUT, BUDGET_EXCEEDED, INVALID_INPUT]
MODEL_TIMEOUT = timedelta(minutes=5)
MEMORY_TIMEOUT = timedelta(seconds=15)
CACHE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=2)
# With no memory worker polling, a cache call gives up after this and counts as a miss.
CACHE_DEADLINE = timedelta(seconds=30)
RECALL_LIMIT = 3
EVENTS_KEPT = 50


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
        self._user_id = request.user_id
        self._ledger = Ledger(budget_usd=request.budget.usd, budget_tokens=request.budget.tokens)
        if request.carried is not None:
            self._resume(request.carried)
        else:
            self._short_term.add(f"user asked: {request.task}")
        workflow.upsert_search_attributes([sa.USER.value_set(request.user_id)])

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

        if request.strategy == "react":
            status, error, answer = await self._react(request, context, tools, queues)
        else:
            status, error = await self._plan_and_execute(request, context, tools, queues)
            answer = error or ""
            if status == TaskStatus.COMPLETED:
                try:
                    answer = await self._synthesize(request, context, knowledge, queues)
                except _BudgetExhausted as err:
                    status, error = TaskStatus.BUDGET_EXHAUSTED, str(err)
                    answer = f"The budget ran out before the answer could be written: {err}"

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
        self._set_status(status, f"finished: {status.value}")
        return TaskResult(
            workflow_id=workflow.info().workflow_id,
            status=status,
            answer=answer,
            steps=self._results,
            ledger=self._ledger,
            llm_calls=sum(
                e.kind == "model" and e.role != "memory" and not e.cached
                for e in self._ledger.entries
            ),
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
        failures = list(self._carried_failures)
        version = self._first_version - 1
        role = "planner"
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
            if plan is None:
                problem = f"plan v{version} was not usable: {response.error}"
            else:
                errors = validate_plan(plan, tools, done=self._outputs)
                money = budget_error(plan, self._remaining_usd())
                over_budget = money is not None and not errors
                if money:
                    errors.append(money)
                problem = f"plan v{version} is invalid: " + "; ".join(errors) if errors else ""
            if problem:
                failures.append(problem)
                self._short_term.add(problem)
                self._event(problem)
                if version > request.max_replans:
                    final = TaskStatus.BUDGET_EXHAUSTED if over_budget else TaskStatus.FAILED
                    return final, problem
                # The small model could not produce a valid plan: a larger one tries next.
                role = "escalation"
                continue
            role = "planner"

            assert plan is not None
            self._plan = plan
            self._set_status(
                TaskStatus.EXECUTING,
                f"plan v{version} by {plan.model}: "
                + ", ".join(f"{s.id}={s.tool}" + (" (if)" if s.when else "") for s in plan.steps),
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
            ),
            PlanResponse,
            queues.planner,
            summary=f"plan v{version} by the {role} (budget left ${remaining:.4f})",
            refusal="planning does not fit the budget",
        )
        self._book_model(response.usage)
        return response

    async def _execute(self, plan: Plan, tools: dict[str, ToolSpec], queues: Queues) -> list[str]:
        """Run the plan: each step starts as soon as its dependencies have settled, so
        independent steps run in parallel. Returns the failures (empty on success).

        After a failure no new step starts; steps already running finish, so their results
        reach the re-plan instead of being paid for and thrown away.
        """
        settled: set[str] = set(self._outputs)  # steps done by earlier plan versions count
        skipped: set[str] = set()
        started: set[str] = set()
        running: dict[str, asyncio.Task[StepResult]] = {}
        reserved: dict[str, float] = {}
        failures: list[str] = []
        out_of_budget: str | None = None
        while True:
            if not failures and out_of_budget is None:
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
                            f"step {step.id} ({step.tool}) needs ${cost:.6f}; ${left:.6f} is left"
                        )
                        break
                    reserved[step.id] = cost
                    running[step.id] = asyncio.ensure_future(
                        self._run_step(plan.version, step, tools[step.tool], queues)
                    )
            if not running:
                break
            await workflow.wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
            for step_id in [i for i, t in running.items() if t.done()]:  # plan order: replay-safe
                result = running.pop(step_id).result()
                reserved.pop(step_id)
                self._record(result)
                settled.add(step_id)
                if result.status == StepStatus.FAILED:
                    failures.append(_failure(result))
            self._publish_cost()
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
        for result in carried.results:
            self._results.append(result)
            if result.status == StepStatus.SUCCEEDED:
                self._outputs[result.step_id] = result
        self._carried_failures = carried.failures
        self._replans = carried.replans
        self._first_version = carried.plan_version + 1
        self._runs = carried.runs + 1
        self._event(f"continued as new (run {self._runs}), {len(carried.results)} results carried")

    def _continue_as_new(self, request: TaskRequest, failures: list[str], version: int) -> None:
        """History is getting long: start a fresh run with the compact state (Temporal
        suggests this well before its limits)."""
        self._event(f"continuing as new after plan v{version}")
        carried = CarriedState(
            short_term=self._short_term.carried(),
            ledger=self._ledger,
            results=self._results,
            failures=failures,
            replans=self._replans,
            plan_version=version,
            runs=self._runs,
        )
        workflow.continue_as_new(request.model_copy(update={"carried": carried}))

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
