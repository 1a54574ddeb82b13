"""Keel's business metrics, counted once per task when it ends, through the SDK's workflow
metric meter (replay-safe: a replayed task counts nothing again). With KEEL_METRICS_ADDRESS
each worker process serves them in Prometheus format beside the SDK's own `temporal_*`
metrics (keel/_metrics.py).

The article's monitoring: cost per task, completion rate without a human, tool error rate,
and what the models cost, "not accuracy".
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import MetricMeter

from keel import durable
from keel.contracts import TaskResult, TaskStatus

PREFIX = "keel_"


def task_ended(result: TaskResult) -> None:
    """Count one ended task from its result: the same numbers as its ledger. A sub-agent's
    model and tool calls count in its own workflow (its parent's ledger holds its spend as
    one `agent` entry, not counted again); tasks and their cost count at the top level."""
    meter = workflow.metric_meter()
    _calls(meter, result)
    if workflow.info().parent is not None:
        return
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


def _calls(meter: MetricMeter, result: TaskResult) -> None:
    model_calls = meter.create_counter(f"{PREFIX}model_calls", "model calls, by role and model")
    tokens = meter.create_counter(f"{PREFIX}model_tokens", "model tokens, by role, model, kind")
    model_usd = meter.create_histogram_float(
        durable.MODEL_COST_METRIC, "what model calls cost (USD), by role and model", "USD"
    )
    tool_calls = meter.create_counter(f"{PREFIX}tool_calls", "tool calls, by tool and outcome")
    for entry in result.ledger.entries:
        if entry.kind == "model":
            who = {"role": entry.role, "model": entry.name}
            model_calls.add(entry.calls, who)
            tokens.add(entry.input_tokens, {**who, "kind": "input"})
            tokens.add(entry.output_tokens, {**who, "kind": "output"})
            model_usd.record(entry.usd, who)
        elif entry.kind == "tool":
            outcome = "ok" if entry.ok else "error"
            tool_calls.add(entry.calls, {"tool": entry.name, "outcome": outcome})
