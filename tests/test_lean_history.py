"""A task's history holds what it did, not the same catalog again: the plan request names the
catalog by reference (the planner worker resolves it), each plan brings back the specs of the
tools it calls, and search attributes change only with a status or a changed cost."""

from __future__ import annotations

import json

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from keel import durable
from keel._workflow_tools import DEFAULT_SUBAGENTS, resolve_catalog
from keel.client import start_task
from keel.contracts import CatalogRef, SubAgent, TaskRequest, TaskStatus, ToolSpec
from keel.testing import Stack
from tests.conftest import unique


def _activities(history: WorkflowHistory) -> dict[str, list[tuple[bytes, bytes]]]:
    """Per activity type, each call's (input, result) payload bytes."""
    scheduled: dict[int, tuple[str, bytes]] = {}
    calls: dict[str, list[tuple[bytes, bytes]]] = {}
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            data = b"".join(p.data for p in a.input.payloads)
            scheduled[e.event_id] = (a.activity_type.name, data)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            a = e.activity_task_completed_event_attributes
            name, data = scheduled[a.scheduled_event_id]
            calls.setdefault(name, []).append((data, b"".join(p.data for p in a.result.payloads)))
    return calls


async def test_a_task_fetches_no_catalog_and_its_plan_request_carries_none(
    stack: Stack,
) -> None:
    task = unique("Compute two products")
    steps = [
        {"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}},
        {"id": "s2", "tool": "calculator", "args": {"expression": "3*5"}},
    ]
    stack.model.script(task, "plan", json.dumps({"steps": steps}))
    handle = await start_task(stack.client, TaskRequest(task=task))
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED, result.error
    assert "42" in result.answer and "15" in result.answer

    calls = _activities(await handle.fetch_history())
    assert durable.LIST_TOOLS not in calls
    [(plan_input, plan_output)] = calls[durable.PLAN]
    request = json.loads(plan_input)
    assert request["tools"] == [] and request["catalog"] is not None
    assert b"input_schema" not in plan_input  # no spec of any tool
    response = json.loads(plan_output)
    assert [t["name"] for t in response["tools"]] == ["calculator"]  # only what it calls
    assert {"calculator", "read_file", "researcher"} <= set(response["offered"])
    # the answer is cached with the episode: no separate cache_store call
    assert durable.CACHE_STORE not in calls and durable.REMEMBER in calls


async def test_search_attributes_change_only_with_a_status_or_a_new_cost(stack: Stack) -> None:
    task = unique("Compute one product")
    stack.model.script(
        task,
        "plan",
        json.dumps({"steps": [{"id": "s1", "tool": "calculator", "args": {"expression": "2*9"}}]}),
    )
    handle = await start_task(stack.client, TaskRequest(task=task, user_id=unique("lean")))
    assert (await handle.result()).status == TaskStatus.COMPLETED
    upserts = []
    for e in (await handle.fetch_history()).events:
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes
            upserts.append(set(fields.indexed_fields) - {"TemporalChangeVersion"})
    upserts = [u for u in upserts if u]
    statuses = ["recalling", "planning", "executing", "synthesizing", "remembering", "completed"]
    assert len(upserts) == len(statuses)  # one per status: none for an unchanged cost
    assert all("KeelStatus" in u for u in upserts)
    assert "KeelUser" in upserts[0]  # with the first status, not on its own


def _spec(name: str) -> ToolSpec:
    schema = {"type": "object"}
    return ToolSpec(
        name=name, description=f"the {name} tool", input_schema=schema, output_schema=schema
    )


def test_the_catalog_by_reference_is_the_catalog_the_workflow_would_build() -> None:
    listed = [_spec("calculator"), _spec("read_file")]
    everything = resolve_catalog(listed, CatalogRef(ask_human=True))
    names = [t.name for t in everything]
    assert names == ["calculator", "read_file", "ask_human", *(a.name for a in DEFAULT_SUBAGENTS)]
    assert everything[-1].runs_as == "subagent" and everything[2].runs_as == "human"

    own = SubAgent(name="helper", description="helps", tools=["calculator"])
    limited = CatalogRef(allowed_tools=["calculator", "helper"], subagents=[own])
    assert [t.name for t in resolve_catalog(listed, limited)] == ["calculator", "helper"]
    assert [t.name for t in resolve_catalog(listed, CatalogRef(subagents=[]))] == [
        "calculator",
        "read_file",
    ]
