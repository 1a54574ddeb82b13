"""Keel's metrics in Prometheus format (KEEL_METRICS_ADDRESS): a real endpoint served by the
SDK runtime of a worker process, scraped after real tasks, its numbers checked against the
tasks' ledgers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from keel._ports import LOCALHOST, free_port
from keel._queues import Queues
from keel.client import connect, start_task
from keel.contracts import (
    Approval,
    Budget,
    Ledger,
    LedgerEntry,
    TaskRequest,
    TaskResult,
    TaskStatus,
)
from keel.settings import SettingsError, settings_from_env
from keel.testing import Stack, eventually, scripted_plan
from tests.conftest import REPO, TRANSFER_STEP, scripted_workers, unique
from tests.test_human import waiting_for

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def samples(text: str, name: str, **labels: str) -> list[float]:
    """The values of every sample of metric `name` whose labels include `labels`."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append(float(match["value"]))
    return found


def total(text: str, name: str, **labels: str) -> float:
    return sum(samples(text, name, **labels))


def entries(ledgers: Iterable[Ledger], kind: str) -> list[LedgerEntry]:
    """Calls of one kind the ledgers booked (cache hits apart: they call nothing)."""
    found = [e for ledger in ledgers for e in ledger.entries if e.kind == kind and not e.cached]
    assert all(e.calls == 1 for e in found)  # booked one by one: no compaction in these tasks
    return found


async def test_a_workers_metrics_endpoint_counts_what_the_ledgers_say(
    stack: Stack, tmp_path: Path
) -> None:
    """Tasks that complete (twice: the second from the cache), fail, run out of budget, wait
    for an approval, and are cancelled while waiting; the endpoint counts each by the
    tasks' own results and ledgers."""
    address = f"{LOCALHOST}:{free_port()}"
    settings = stack.settings.model_copy(
        update={"metrics_address": address, "home": tmp_path / "home"}
    )
    target = stack.client.service_client.config.target_host
    client = await connect(settings, target)  # as every Keel process: its metrics runtime
    queues = Queues("metrics-")
    done, failing = unique("What is 6*7?"), unique("Call the broken service")
    approved, cancelled = unique("Send bob five dollars"), unique("Send bob five dollars too")
    results: list[TaskResult] = []
    async with scripted_workers(client, settings, queues) as (_, model):
        model.script(
            done,
            "plan",
            scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
        )
        model.script(
            failing,
            "plan",
            scripted_plan({"id": "s1", "tool": "flaky", "args": {"key": failing, "failures": 99}}),
        )
        for task in (approved, cancelled):
            model.script(task, "plan", scripted_plan(TRANSFER_STEP))
        for request in (
            TaskRequest(task=done, max_replans=0),
            TaskRequest(task=done, max_replans=0),  # the same task again: cached
            TaskRequest(task=failing, max_replans=1),  # fails again after a re-plan
            TaskRequest(task=unique("What is 2+2?"), budget=Budget(usd=0.00001)),
        ):
            results.append(await (await start_task(client, request, queues=queues)).result())
        handle = await start_task(client, TaskRequest(task=approved), queues=queues)
        await waiting_for(handle, "s1")
        await handle.execute_update("approve", Approval(step_id="s1", by="carol"))
        results.append(await handle.result())
        handle = await start_task(client, TaskRequest(task=cancelled), queues=queues)
        await waiting_for(handle, "s1")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        cancelled_ledger = await handle.query("ledger", result_type=Ledger)

        async def scraped() -> str | None:
            text = httpx.get(f"http://{address}/metrics", timeout=5).text
            return text if total(text, "keel_tasks_ended_total") >= 6 else None

        text = await eventually(scraped, "every task to be counted")

    assert [r.status for r in results] == [
        TaskStatus.COMPLETED,
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.BUDGET_EXHAUSTED,
        TaskStatus.COMPLETED,
    ]
    assert total(text, "keel_tasks_started_total") == 6
    for status, count in (
        ("completed", 3),
        ("failed", 1),
        ("budget_exhausted", 1),
        ("cancelled", 1),
    ):
        assert total(text, "keel_tasks_ended_total", status=status) == count, status
    assert total(text, "keel_tasks_completed_without_human_total") == 2
    # cost per task: a histogram whose sum is what the ledgers spent
    assert total(text, "keel_task_cost_usd_count") == 6
    spent = sum(r.ledger.total_usd for r in results) + cancelled_ledger.total_usd
    assert math.isclose(total(text, "keel_task_cost_usd_sum"), spent, rel_tol=1e-6)
    ledgers = [r.ledger for r in results] + [cancelled_ledger]
    # tool calls, errors and latency by tool
    booked: dict[tuple[str, str], list[float]] = {}
    for e in entries(ledgers, "tool"):
        booked.setdefault((e.name, "ok" if e.ok else "error"), []).append(e.latency_ms / 1000)
    for (name, outcome), seconds in booked.items():
        labels = {"tool": name, "outcome": outcome}
        assert total(text, "keel_tool_calls_total", **labels) == len(seconds)
        assert total(text, "keel_tool_latency_seconds_count", **labels) == len(seconds)
        assert math.isclose(
            total(text, "keel_tool_latency_seconds_sum", **labels), sum(seconds), rel_tol=1e-6
        )
    assert total(text, "keel_tool_calls_total", tool="flaky", outcome="error") == 2
    assert total(text, "keel_replans_total") == sum(r.replans for r in results) == 1
    assert total(text, "keel_tool_calls_total", tool="transfer", outcome="ok") == 1
    assert not samples(text, "keel_tool_calls_total", tool="transfer", outcome="error")  # never ran
    # model calls and tokens by role and model; cache hits apart
    models = entries(ledgers, "model")
    assert total(text, "keel_model_calls_total") == len(models)
    for role in {e.role for e in models}:
        assert total(text, "keel_model_calls_total", role=role) == sum(
            1 for e in models if e.role == role
        )
    tokens = sum(e.input_tokens + e.output_tokens for e in models)
    assert total(text, "keel_model_tokens_total") == tokens
    hits = sum(ledger.cache_hits for ledger in ledgers)
    assert hits >= 1 and total(text, "keel_cache_hits_total") == hits
    # the budget refused the plan's model call; the approval waited, once, and was decided
    assert total(text, "keel_budget_refusals_total", call="model") >= 1
    assert total(text, "keel_human_wait_seconds_count", kind="approval", outcome="decided") == 1
    assert total(text, "keel_human_wait_seconds_sum") > 0
    # in buckets of their own units (seconds up to days), not the SDK's millisecond defaults
    assert re.search(r'keel_tool_latency_seconds_bucket\{[^}]*le="300"', text)
    assert re.search(r'keel_human_wait_seconds_bucket\{[^}]*le="259200"', text)
    # and the SDK's own metrics beside them
    assert samples(text, "temporal_workflow_completed_total")
    # the Grafana dashboard asks for metrics the endpoint has
    served = {m["name"] for m in map(_SAMPLE.match, text.splitlines()) if m}
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    asked = {name for e in exprs for name in re.findall(r"\b(?:keel|temporal)_[a-z_]+\b", e)}
    assert len(asked) >= 12 and asked <= served, asked - served


def test_a_bad_metrics_address_is_one_line() -> None:
    with pytest.raises(SettingsError, match="give HOST:PORT"):
        settings_from_env({"KEEL_METRICS_ADDRESS": "9464"})
