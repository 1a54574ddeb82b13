"""`keel report`: the numbers it prints for one user's tasks, checked against the tasks it ran
(their results and ledgers) on the session's real dev server; and its window and percentile
rules."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from temporalio.client import WorkflowFailureError

from keel import _report as report
from keel import _search_attributes as sa
from keel._short_term import ShortTermMemory
from keel.client import start_task
from keel.contracts import CarriedState, Ledger, TaskRequest, TaskResult, TaskStatus
from keel.testing import Stack, eventually, scripted_plan
from tests.conftest import TRANSFER_STEP, unique
from tests.test_cli_human import keel, keel_ok, keel_refused, waiting_for


def test_the_window_is_a_number_and_a_unit() -> None:
    assert report.parse_since("24h") == timedelta(hours=24)
    assert report.parse_since("90m") == timedelta(minutes=90)
    assert report.parse_since("1.5d") == timedelta(hours=36)
    for bad in ("24", "h", "-1h", "0s", "400d", "1y", "24 hours"):
        with pytest.raises(ValueError, match="--since"):
            report.parse_since(bad)


def test_percentiles_are_values_some_task_had() -> None:
    costs = [0.5, 0.1, 0.3, 0.2, 0.4]
    assert report.percentile(costs, 50) == 0.3
    assert report.percentile(costs, 95) == 0.5
    assert report.percentile([0.7], 95) == 0.7
    assert report.percentile([], 50) == 0.0
    assert report.percentile([float(i) for i in range(1, 101)], 95) == 95.0


async def test_the_report_sums_up_the_users_tasks_as_their_ledgers_say(stack: Stack) -> None:
    user = unique("reporter").replace(" ", "-").replace("[", "").replace("]", "")
    done, again, failing = unique("What is 6*7?"), unique("What is 5*5?"), unique("Flaky API")
    stack.model.script(
        done,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
    )
    stack.model.script(
        again,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "calculator", "args": {"expression": "5*5"}},
            {"id": "s2", "tool": "calculator", "args": {"expression": "1/0"}},
        ),
    )
    stack.model.script(
        failing,
        "plan",
        scripted_plan({"id": "s1", "tool": "flaky", "args": {"key": failing, "failures": 99}}),
    )
    cancelled = unique("Send bob five dollars, then never mind")
    stack.model.script(cancelled, "plan", scripted_plan(TRANSFER_STEP))
    results: list[TaskResult] = []
    for task in (done, again, failing):
        request = TaskRequest(task=task, user_id=user, max_replans=0)
        results.append(await (await start_task(stack.client, request)).result())
    handle = await start_task(stack.client, TaskRequest(task=cancelled, user_id=user))
    await waiting_for(handle, "s1")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    cancelled_cost = (await handle.query("ledger"))["total_usd"]

    async def reported() -> dict[str, object] | None:
        # visibility lists a task a moment after it ends, with its final attributes
        listed = [
            wf
            async for wf in stack.client.list_workflows(f'{sa.USER.name} = "{user}"')
            if wf.close_time is not None and wf.typed_search_attributes.get(sa.STATUS)
        ]
        if len(listed) < 4 or any(
            wf.typed_search_attributes.get(sa.STATUS) == "executing" for wf in listed
        ):
            return None
        found: dict[str, object] = json.loads(
            await keel_ok(stack, "report", "--user", user, "--json")
        )
        return found if found["tasks"] == 4 else None

    got = await eventually(reported, "visibility to list the user's four tasks")

    statuses = [r.status for r in results]
    assert statuses == [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.FAILED]
    assert got["by_status"] == {"failed": 2, "completed": 1, "cancelled": 1}
    costs = [r.ledger.total_usd for r in results] + [cancelled_cost]
    spread = got["cost_usd"]
    assert isinstance(spread, dict)
    assert math.isclose(spread["total"], sum(costs), rel_tol=1e-9)
    assert math.isclose(spread["mean"], sum(costs) / 4, rel_tol=1e-9)
    assert spread["p50"] == report.percentile(costs, 50)
    assert spread["p95"] == max(costs)
    assert got["completed_without_human"] == 1
    assert got["completion_rate_without_human"] == 0.25
    assert got["without_ledger"] == 1  # the cancelled one: its cost and status only
    # tools: calls and errors as the ledgers booked them; 1/0 and the flaky API failed
    tools = {
        (e.name, e.ok): e
        for r in results
        for e in r.ledger.entries
        if e.kind == "tool" and not e.cached
    }
    assert set(tools) >= {("calculator", True), ("calculator", False), ("flaky", False)}
    assert got["tools"] == {
        "calculator": {"calls": 3, "errors": 1, "error_rate": pytest.approx(1 / 3)},
        "flaky": {"calls": 1, "errors": 1, "error_rate": 1.0},
    }
    models = got["models"]
    assert isinstance(models, dict)
    booked = [e for r in results for e in r.ledger.entries if e.kind == "model" and not e.cached]
    assert sum(m["calls"] for m in models.values()) == len(booked)
    assert math.isclose(
        sum(m["usd"] for m in models.values()), sum(e.usd for e in booked), rel_tol=1e-9
    )
    costliest = got["costliest"]
    assert isinstance(costliest, list)
    assert [t["cost_usd"] for t in costliest] == sorted(costs, reverse=True)
    assert costliest[0]["user"] == user

    # the same numbers for a person
    text = await keel_ok(stack, "report", "--user", user)
    assert "Tasks of user " in text and ": 4" in text
    assert "Completed without a human: 1 of 4 (25%)" in text
    assert "calculator" in text and "33.3%" in text
    assert f"${sum(costs):.6f}" in text


async def test_a_sub_agents_calls_count_with_its_tasks(stack: Stack) -> None:
    """A parent's ledger books its sub-agent as one `agent` entry: the report reads the
    sub-agent's own run for its tool and model calls (the task's cost already has them)."""
    user = unique("delegator").replace(" ", "-").replace("[", "").replace("]", "")
    task, sub = unique("Have the coder work out 6*7"), unique("work out 6*7")
    stack.model.script(
        task, "plan", scripted_plan({"id": "s1", "tool": "coder", "args": {"task": sub}})
    )
    stack.model.script(
        sub,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
    )
    result = await (await start_task(stack.client, TaskRequest(task=task, user_id=user))).result()
    assert result.status == TaskStatus.COMPLETED
    assert [e.kind for e in result.ledger.entries].count("agent") == 1

    async def reported() -> dict[str, object] | None:
        found: dict[str, object] = json.loads(
            await keel_ok(stack, "report", "--user", user, "--json")
        )
        return found if found["tasks"] == 1 and found["subagents"] == 1 else None

    got = await eventually(reported, "visibility to list the task and its sub-agent")
    assert got["tools"] == {"calculator": {"calls": 1, "errors": 0, "error_rate": 0.0}}
    models = got["models"]
    assert isinstance(models, dict) and isinstance(got["cost_usd"], dict)
    # every dollar the task spent went to models: the sub-agent's calls are counted
    spent = sum(m["usd"] for m in models.values())
    assert math.isclose(spent, result.ledger.total_usd, rel_tol=1e-9)
    assert math.isclose(got["cost_usd"]["total"], result.ledger.total_usd, rel_tol=1e-9)


async def test_a_task_temporal_failed_counts_as_failed(stack: Stack) -> None:
    """A workflow that failed (here: a caller sent `carried`) has no result, and its
    KeelStatus still says where it stood (`running`): the report says how it ended."""
    user = unique("forger").replace(" ", "-").replace("[", "").replace("]", "")
    carried = CarriedState(short_term=ShortTermMemory().carried(), ledger=Ledger())
    request = TaskRequest(task=unique("What is 6*7?"), user_id=user, carried=carried)
    handle = await start_task(stack.client, request)
    with pytest.raises(WorkflowFailureError):
        await handle.result()

    async def reported() -> dict[str, object] | None:
        found: dict[str, object] = json.loads(
            await keel_ok(stack, "report", "--user", user, "--json")
        )
        return found if found["tasks"] == 1 else None

    got = await eventually(reported, "visibility to list the failed task")
    assert got["by_status"] == {"failed": 1} and got["without_ledger"] == 1


async def test_bad_report_flags_are_one_line(stack: Stack) -> None:
    assert "give a number and a unit" in await keel_refused(stack, "report", "--since", "yesterday")
    assert "--limit must be 1 or more" in await keel_refused(stack, "report", "--limit", "0")
    assert "cannot be searched for" in await keel_refused(stack, "report", "--user", 'a"b')
    code, out, _ = await keel(stack, "report", "--user", unique("nobody").replace(" ", ""))
    assert code == 0 and ": 0" in out
