"""How the AgentTask calls its activities: named option presets (timeouts, retries,
cancellation) and the one helper for model-backed activities.

The presets are replay-visible: a running task's next calls use whatever is here, so change
them deliberately. Each preset is the keyword arguments of `workflow.execute_activity`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypedDict, TypeVar

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityCancellationType

from keel._core.budget import BudgetExhausted
from keel.contracts import Extraction, PlanResponse, ReactDecision, Synthesis, ToolSpec
from keel.durable import BUDGET_EXCEEDED, INVALID_INPUT, INVALID_OUTPUT, TOOL_ERROR
from workflows import metrics


class ActivityOptions(TypedDict, total=False):
    start_to_close_timeout: timedelta
    schedule_to_close_timeout: timedelta
    heartbeat_timeout: timedelta
    retry_policy: RetryPolicy
    cancellation_type: ActivityCancellationType


MEMORY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)

# Model calls heartbeat every second while they wait on the model (activities/heartbeat.py):
# a killed planner or llm worker costs the heartbeat timeout, not the 5-minute one.
MODEL = ActivityOptions(
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=timedelta(seconds=15),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_attempts=3,
        non_retryable_error_types=[BUDGET_EXCEEDED, INVALID_INPUT],
    ),
)
MEMORY = ActivityOptions(start_to_close_timeout=timedelta(seconds=15), retry_policy=MEMORY_RETRY)
# With no memory worker polling, a cache call gives up after 30 s and counts as a miss.
CACHE = ActivityOptions(
    start_to_close_timeout=timedelta(seconds=15),
    schedule_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=2),
)
# Embedding a long document takes a while on a CPU.
DOCUMENT = ActivityOptions(
    start_to_close_timeout=timedelta(minutes=2), retry_policy=RetryPolicy(maximum_attempts=5)
)
NOTIFY = ActivityOptions(start_to_close_timeout=timedelta(seconds=30), retry_policy=MEMORY_RETRY)
RELEASE = ActivityOptions(start_to_close_timeout=timedelta(seconds=30), retry_policy=MEMORY_RETRY)

NON_RETRYABLE_TOOL_ERRORS = [TOOL_ERROR, INVALID_OUTPUT, BUDGET_EXCEEDED, INVALID_INPUT]
# Tools heartbeat about every second; a worker that dies mid-call is noticed after this.
TOOL_HEARTBEAT_TIMEOUT = timedelta(seconds=10)


def tool(spec: ToolSpec) -> ActivityOptions:
    """A tool's own options, from its catalog entry; only idempotent tools are retried."""
    return ActivityOptions(
        start_to_close_timeout=timedelta(seconds=spec.timeout_s),
        heartbeat_timeout=TOOL_HEARTBEAT_TIMEOUT,
        # a cancelled task waits until its tools have really stopped
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        retry_policy=RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            maximum_attempts=spec.max_attempts if spec.idempotent else 1,
            non_retryable_error_types=NON_RETRYABLE_TOOL_ERRORS,
        ),
    )


def failure_cause(err: ActivityError) -> ApplicationError | None:
    cause = err.cause
    return cause if isinstance(cause, ApplicationError) else None


_ModelResult = TypeVar("_ModelResult", PlanResponse, ReactDecision, Synthesis, Extraction)


async def call_model(
    name: str,
    arg: Any,
    result_type: type[_ModelResult],
    queue: str,
    summary: str,
    refusal: str,
    priority: Priority = Priority.default,
) -> _ModelResult:
    """A model-backed activity; its refusal to exceed its allowance ends the task as out of
    budget (BudgetExhausted) instead of failing it."""
    try:
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            task_queue=queue,
            summary=summary,
            priority=priority,
            **MODEL,
        )
    except ActivityError as err:
        cause = failure_cause(err)
        if cause and cause.type == BUDGET_EXCEEDED:
            metrics.LEDGER.refused("model")
            raise BudgetExhausted(f"{refusal}: {cause.message}") from None
        raise
