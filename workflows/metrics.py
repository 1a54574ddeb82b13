"""Keel's business metrics, through the SDK's workflow metric meter (replay-safe: a replayed
task counts nothing again). With KEEL_METRICS_ADDRESS each worker process serves them in
Prometheus format beside the SDK's own `temporal_*` metrics (keel/_metrics.py).

The article's monitoring: cost per task, completion rate without a human, tool error rate,
and what the models cost, "not accuracy". Calls count as they are booked (LEDGER, the budget
book's observer: the same entries as the task's ledger, so a sub-agent counts its own calls
and its parent's one `agent` entry for it counts nothing); tasks count when they start and end.
"""

from __future__ import annotations

from typing import Literal

from temporalio import workflow

from keel import durable
from keel.contracts import LedgerEntry, TaskResult, TaskStatus

PREFIX = "keel_"


def _top_level() -> bool:
    return workflow.info().parent is None


def task_started() -> None:
    """A task a caller started (not its continue-as-new runs, not its sub-agents)."""
    if _top_level() and not workflow.info().continued_run_id:
        workflow.metric_meter().create_counter(
            f"{PREFIX}tasks_started", "tasks started by callers"
        ).add(1)


def task_ended(result: TaskResult) -> None:
    """Count one ended task from its result (a sub-agent's end is its parent's step)."""
    if not _top_level():
        return
    meter = workflow.metric_meter()
    status = {"status": result.status.value}
    meter.create_counter(f"{PREFIX}tasks_ended", "tasks ended, by status").add(1, status)
    meter.create_histogram_float(
        durable.TASK_COST_METRIC, "what one task spent (USD)", "USD"
    ).record(result.ledger.total_usd, status)
    if result.status == TaskStatus.COMPLETED and result.human_interventions == 0:
        meter.create_counter(
            f"{PREFIX}tasks_completed_without_human", "tasks completed with no person stepping in"
        ).add(1)
    if result.replans:
        meter.create_counter(f"{PREFIX}replans", "re-plans after a failed step or plan").add(
            result.replans
        )


def human_waited(kind: str, seconds: float, outcome: Literal["decided", "timed_out"]) -> None:
    """How long a task waited for a person (to the decision, or to the wait's timeout)."""
    workflow.metric_meter().create_histogram_float(
        durable.HUMAN_WAIT_METRIC, "how long tasks waited for a person (s)", "s"
    ).record(seconds, {"kind": kind, "outcome": outcome})


class _LedgerMetrics:
    """The budget book's observer: each booking and refusal as it happens."""

    def booked(self, entry: LedgerEntry) -> None:
        meter = workflow.metric_meter()
        if entry.cached:
            meter.create_counter(
                f"{PREFIX}cache_hits", "model answers and tool results served from the cache"
            ).add(entry.calls, {"kind": entry.kind, "name": entry.name})
        elif entry.kind == "model":
            who = {"role": entry.role, "model": entry.name}
            meter.create_counter(f"{PREFIX}model_calls", "model calls, by role and model").add(
                entry.calls, who
            )
            tokens = meter.create_counter(
                f"{PREFIX}model_tokens", "model tokens, by role, model and kind"
            )
            tokens.add(entry.input_tokens, {**who, "kind": "input"})
            tokens.add(entry.output_tokens, {**who, "kind": "output"})
            meter.create_histogram_float(
                durable.MODEL_COST_METRIC, "what model calls cost (USD), by role and model", "USD"
            ).record(entry.usd, who)
        elif entry.kind == "tool":
            labels = {"tool": entry.name, "outcome": "ok" if entry.ok else "error"}
            meter.create_counter(f"{PREFIX}tool_calls", "tool calls, by tool and outcome").add(
                entry.calls, labels
            )
            meter.create_histogram_float(
                durable.TOOL_LATENCY_METRIC, "how long tool calls took (s), by tool", "s"
            ).record(entry.latency_ms / 1000, labels)

    def refused(self, what: Literal["model", "tool"]) -> None:
        workflow.metric_meter().create_counter(
            f"{PREFIX}budget_refusals", "calls not made because they did not fit the budget"
        ).add(1, {"call": what})


LEDGER = _LedgerMetrics()
