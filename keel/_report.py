"""`keel report`: what tasks cost and how they went over a window of time, on any cluster.

Visibility lists the tasks that ended in the window (top-level AgentTask runs: not sub-agents,
not runs that continued as new) with Keel's search attributes; each completed run's result
holds its whole ledger (carried over continue-as-new), which gives the per-tool and
per-model numbers. A parent's ledger holds a sub-agent's spend as one `agent` entry, so the
sub-agents of those tasks (their runs whose root is a listed task) add their own calls to the
tool and model tables; a task's cost already includes them. A task with no result
(cancelled, terminated) counts by its search attributes only: status and cost.

The article's monitoring: cost per task, completion rate without a human, tool error rate,
model spend — "not accuracy". The Prometheus metrics (workflows/metrics.py) count the same
things live; this reads them back from what the cluster keeps.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, Field, computed_field
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus

from keel import _search_attributes as sa
from keel import durable
from keel.contracts import TaskResult

RESULT_CONCURRENCY = 16  # results read at once: a few hundred tasks in seconds
COSTLIEST = 5
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_WINDOW = timedelta(days=366)


def parse_since(text: str) -> timedelta:
    """`30m`, `24h`, `7d`, `2w`: how far back the report reaches."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"--since {text!r}: give a number and a unit, like 30m, 24h, 7d or 2w")
    window = timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
    if not timedelta(0) < window <= MAX_WINDOW:
        raise ValueError(f"--since {text!r}: give more than 0 and at most {MAX_WINDOW.days}d")
    return window


class Spread(BaseModel):
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    total: float = 0.0


class ToolLine(BaseModel):
    calls: int = 0
    errors: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


class ModelLine(BaseModel):
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0


class TaskLine(BaseModel):
    workflow_id: str
    user: str
    status: str
    cost_usd: float
    closed: datetime | None = None


class Report(BaseModel):
    since: datetime
    until: datetime
    user: str | None = None
    tasks: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    cost_usd: Spread = Field(default_factory=Spread)
    completed_without_human: int = 0
    completion_rate_without_human: float = 0.0
    tools: dict[str, ToolLine] = Field(default_factory=dict)
    models: dict[str, ModelLine] = Field(default_factory=dict)
    costliest: list[TaskLine] = Field(default_factory=list)
    without_ledger: int = Field(default=0, description="tasks with no result: cost and status only")
    subagents: int = Field(default=0, description="sub-agent runs whose calls are in the tables")
    truncated: bool = Field(default=False, description="more tasks ended than --limit: raise it")


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: a value some task really had."""
    if not values:
        return 0.0
    ranked = sorted(values)
    return ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]


def visibility_query(since: datetime, user: str | None, subagents: bool = False) -> str:
    """Top-level tasks (or sub-agents) that ended after `since` (a run that continued as new
    is not an end; `user` is quoted by the caller)."""
    query = (
        f'WorkflowType = "{durable.AGENT_TASK}" AND CloseTime > "{since.isoformat()}" '
        'AND ExecutionStatus != "ContinuedAsNew" AND '
        f"ParentWorkflowId IS {'NOT NULL' if subagents else 'NULL'}"
    )
    if user is not None:
        query += f" AND {sa.USER.name} = {user}"
    return query


def _add_calls(report: Report, result: TaskResult) -> None:
    """The tool and model calls one run's ledger booked (cache hits made none)."""
    for entry in result.ledger.entries:
        if entry.cached:
            continue
        if entry.kind == "tool":
            tool = report.tools.setdefault(entry.name, ToolLine())
            tool.calls += entry.calls
            tool.errors += 0 if entry.ok else entry.calls
        elif entry.kind == "model":
            model = report.models.setdefault(entry.name, ModelLine())
            model.calls += entry.calls
            model.input_tokens += entry.input_tokens
            model.output_tokens += entry.output_tokens
            model.usd += entry.usd


def summarize(
    report: Report,
    listed: list[WorkflowExecution],
    results: list[TaskResult | None],
    subagent_results: Sequence[TaskResult | None] = (),
) -> Report:
    """The report's numbers from the listed tasks and their results (None: no result), and
    the calls of their sub-agents."""
    costs: list[float] = []
    lines: list[TaskLine] = []
    statuses: Counter[str] = Counter()
    for wf, result in zip(listed, results, strict=True):
        attrs = wf.typed_search_attributes
        status = result.status.value if result is not None else _status_without_result(wf)
        cost = result.ledger.total_usd if result is not None else attrs.get(sa.COST_USD) or 0.0
        statuses[status] += 1
        costs.append(cost)
        lines.append(TaskLine(
            workflow_id=wf.id, user=attrs.get(sa.USER) or "", status=status, cost_usd=cost,
            closed=wf.close_time,
        ))  # fmt: skip
        if result is None:  # cancelled, or unreadable here: what its attributes say
            report.without_ledger += 1
            report.completed_without_human += bool(attrs.get(sa.WITHOUT_HUMAN))
            continue
        report.completed_without_human += result.completed_without_human
        _add_calls(report, result)
    for sub in subagent_results:
        if sub is not None:
            report.subagents += 1
            _add_calls(report, sub)
    report.tasks = len(listed)
    report.by_status = dict(statuses.most_common())
    if costs:
        report.cost_usd = Spread(
            mean=sum(costs) / len(costs),
            p50=percentile(costs, 50),
            p95=percentile(costs, 95),
            total=sum(costs),
        )
        report.completion_rate_without_human = report.completed_without_human / len(costs)
    report.costliest = sorted(lines, key=lambda t: -t.cost_usd)[:COSTLIEST]
    return report


def _status_without_result(wf: WorkflowExecution) -> str:
    """A task with no TaskResult: how Temporal ended it (its KeelStatus may still say where
    it was when it failed, `recalling` say, which is no end)."""
    if wf.status == WorkflowExecutionStatus.CANCELED:
        return "cancelled"  # Keel's word for it
    return wf.status.name.lower() if wf.status is not None else "unknown"


async def build(
    client: Client, since: timedelta, user: str | None, quoted_user: str | None, limit: int
) -> Report:
    """List the window's tasks, read the completed ones' results, sum them up."""
    until = datetime.now().astimezone()
    start = until - since
    report = Report(since=start, until=until, user=user)
    query = visibility_query(start, quoted_user)
    listed = [wf async for wf in client.list_workflows(query, limit=limit + 1)]
    report.truncated = len(listed) > limit
    listed = listed[:limit]
    # their sub-agents (closed before them, so within the window too), at most `limit` more
    roots = {wf.id for wf in listed}
    subs_query = visibility_query(start, quoted_user, subagents=True)
    subagents = [
        wf async for wf in client.list_workflows(subs_query, limit=limit + 1) if wf.root_id in roots
    ]
    report.truncated = report.truncated or len(subagents) > limit
    subagents = subagents[:limit]
    gate = asyncio.Semaphore(RESULT_CONCURRENCY)

    async def result_of(wf: WorkflowExecution) -> TaskResult | None:
        if wf.status != WorkflowExecutionStatus.COMPLETED:
            return None
        async with gate:
            handle = client.get_workflow_handle(wf.id, run_id=wf.run_id, result_type=TaskResult)
            try:
                return await handle.result(follow_runs=False)
            except Exception:  # unreadable here (another cluster's key, an old shape)
                return None  # counted by its status and cost attributes

    results = await asyncio.gather(*(result_of(wf) for wf in listed))
    subagent_results = await asyncio.gather(*(result_of(wf) for wf in subagents))
    return summarize(report, listed, list(results), list(subagent_results))


def render(report: Report) -> list[str]:
    """The report as lines for a terminal."""
    whose = f" of user {report.user}" if report.user else ""
    window = f"{report.since:%Y-%m-%d %H:%M} – {report.until:%Y-%m-%d %H:%M %Z}"
    lines = [f"Tasks{whose} that ended {window}: {report.tasks}"]
    if report.truncated:
        lines.append("  (only the most recent ones: more ended than --limit; raise it)")
    if not report.tasks:
        return lines
    lines.append("  " + ", ".join(f"{status} {n}" for status, n in report.by_status.items()))
    c = report.cost_usd
    lines.append(
        f"Cost per task: mean ${c.mean:.6f}, p50 ${c.p50:.6f}, p95 ${c.p95:.6f}; "
        f"total ${c.total:.6f}"
    )
    lines.append(
        f"Completed without a human: {report.completed_without_human} of {report.tasks} "
        f"({report.completion_rate_without_human:.0%})"
    )
    if report.without_ledger:
        lines.append(
            f"  ({report.without_ledger} ended without a result: counted by status and cost only)"
        )
    width = max([24, *map(len, report.tools), *map(len, report.models)])
    if report.subagents:
        lines.append(f"  (tools and models include the calls of {report.subagents} sub-agent runs)")
    if report.tools:
        lines.append("Tools (calls, errors, error rate):")
        for name, tool in sorted(report.tools.items(), key=lambda kv: -kv[1].calls):
            lines.append(
                f"  {name:<{width}} {tool.calls:>6} {tool.errors:>6} {tool.error_rate:>7.1%}"
            )
    if report.models:
        lines.append("Models (calls, tokens in/out, spend):")
        for name, model in sorted(report.models.items(), key=lambda kv: -kv[1].usd):
            lines.append(
                f"  {name:<{width}} {model.calls:>6} "
                f"{model.input_tokens:>9}/{model.output_tokens:<9} ${model.usd:.6f}"
            )
    lines.append("Most expensive tasks:")
    for task in report.costliest:
        lines.append(f"  {task.workflow_id}  {task.user}  {task.status}  ${task.cost_usd:.6f}")
    return lines
