"""Keel's metrics in Prometheus format (KEEL_METRICS_ADDRESS): a real endpoint served by the
SDK runtime of a worker process, scraped after real tasks, its numbers checked against the
tasks' ledgers."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from keel._ports import LOCALHOST, free_port
from keel._queues import Queues
from keel.client import connect, start_task
from keel.contracts import TaskRequest, TaskResult, TaskStatus
from keel.settings import SettingsError, settings_from_env
from keel.testing import Stack, eventually, scripted_plan
from tests.conftest import scripted_components, unique
from workers.process import build_all, workers_running

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


def entries(results: Iterable[TaskResult], kind: str) -> list[tuple[str, str, int, bool, float]]:
    return [
        (e.name, e.role, e.calls, e.ok, e.usd)
        for r in results
        for e in r.ledger.entries
        if e.kind == kind
    ]


async def test_a_workers_metrics_endpoint_counts_what_the_ledgers_say(
    stack: Stack, tmp_path: Path
) -> None:
    address = f"{LOCALHOST}:{free_port()}"
    settings = stack.settings.model_copy(
        update={"metrics_address": address, "home": tmp_path / "home"}
    )
    target = stack.client.service_client.config.target_host
    client = await connect(settings, target)  # as every Keel process: its metrics runtime
    queues = Queues("metrics-")
    components, model = scripted_components(settings, queues)
    done, failing = unique("What is 6*7?"), unique("Call the broken service")
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
    results = []
    try:
        async with workers_running(build_all(client, components)):
            for task in (done, failing):
                request = TaskRequest(task=task, max_replans=0)
                results.append(await (await start_task(client, request, queues=queues)).result())

            async def scraped() -> str | None:
                text = httpx.get(f"http://{address}/metrics", timeout=5).text
                return text if total(text, "keel_tasks_ended_total") >= 2 else None

            text = await eventually(scraped, "both tasks to be counted")
    finally:
        components.close_memory()

    assert [r.status for r in results] == [TaskStatus.COMPLETED, TaskStatus.FAILED]
    assert total(text, "keel_tasks_ended_total", status="completed") == 1
    assert total(text, "keel_tasks_ended_total", status="failed") == 1
    assert total(text, "keel_tasks_completed_without_human_total") == 1
    # cost per task: a histogram whose sum is what the ledgers spent
    assert total(text, "keel_task_cost_usd_count") == 2
    spent = sum(r.ledger.total_usd for r in results)
    assert math.isclose(total(text, "keel_task_cost_usd_sum"), spent, rel_tol=1e-6)
    # tool calls and errors by tool, model calls and tokens by role and model
    booked: dict[tuple[str, str], int] = {}
    for name, _, calls, ok, _ in entries(results, "tool"):
        key = (name, "ok" if ok else "error")
        booked[key] = booked.get(key, 0) + calls
    for (name, outcome), calls in booked.items():
        assert total(text, "keel_tool_calls_total", tool=name, outcome=outcome) == calls
    assert total(text, "keel_tool_calls_total", tool="flaky", outcome="error") == 1
    models = entries(results, "model")
    assert total(text, "keel_model_calls_total") == sum(calls for _, _, calls, _, _ in models)
    for role in {role for _, role, _, _, _ in models}:
        calls = sum(c for _, r, c, _, _ in models if r == role)
        assert total(text, "keel_model_calls_total", role=role) == calls
    tokens = sum(e.input_tokens + e.output_tokens for r in results for e in r.ledger.entries)
    assert total(text, "keel_model_tokens_total") == tokens
    # and the SDK's own metrics beside them
    assert samples(text, "temporal_workflow_completed_total")


def test_a_bad_metrics_address_is_one_line() -> None:
    with pytest.raises(SettingsError, match="give HOST:PORT"):
        settings_from_env({"KEEL_METRICS_ADDRESS": "9464"})
