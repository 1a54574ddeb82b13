"""Short-term memory: bounded in the workflow, folded into a summary, carried across
continue-as-new."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from keel._short_term import SUMMARY_CHARS, WINDOW_CHARS, WINDOW_ENTRIES, ShortTermMemory
from keel.client import start_task
from keel.contracts import (
    Budget,
    CarriedState,
    Ledger,
    StepStatus,
    TaskProgress,
    TaskRequest,
    TaskStatus,
)
from keel.testing import Stack, scripted_plan
from tests.conftest import own_stack, unique


def test_the_window_stays_bounded_and_folds_into_the_summary() -> None:
    memory = ShortTermMemory()
    for i in range(200):
        memory.add(f"observation {i}: " + "x" * (i % 50) + "\nsecond line never summarised")
    assert len(memory.window) <= WINDOW_ENTRIES
    assert sum(len(e) for e in memory.window) <= WINDOW_CHARS
    assert memory.window[-1].startswith("observation 199")
    assert memory.folded == 200 - len(memory.window)
    assert len(memory.summary) <= SUMMARY_CHARS
    assert "observation 179" in memory.summary and "second line" not in memory.summary

    carried = memory.carried()
    assert carried.window == [] and carried.folded == 200
    assert carried.summary.endswith(memory.window[-1].splitlines()[0])
    assert memory.window  # carrying copies; the live window is untouched
    [recap] = carried.recap()
    assert recap.startswith("earlier in this task (200 events): ")


def test_a_long_entry_cannot_flush_the_window() -> None:
    memory = ShortTermMemory()
    memory.add("short")
    memory.add("y" * 100_000)
    assert memory.window[-1] == "y" * 500 and memory.window[0] == "short"


async def test_carried_state_from_a_caller_is_refused(stack: Stack) -> None:
    """Only a continue-as-new hands a run carried state: a caller's would adopt any ledger
    (a budget of a million dollars) and run any plan without validation or approval."""
    ledger = Ledger(budget_usd=1_000_000)
    carried = CarriedState(short_term=ShortTermMemory().carried(), ledger=ledger)
    request = TaskRequest(task=unique("What is 6*7?"), budget=Budget(usd=0.0001), carried=carried)
    handle = await start_task(stack.client, request)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert "a caller may not send it" in cause.message
    events = (await handle.fetch_history()).events
    assert not any(e.HasField("activity_task_scheduled_event_attributes") for e in events)


@pytest.fixture(scope="module")
async def eager_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """A second dev server that suggests continue-as-new after 20 history events (the
    default is 4K), with its own workers, so a short task continues as new for real."""
    flags = ("--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=20")
    async with own_stack(tmp_path_factory.mktemp("eager"), *flags) as stack:
        yield stack


async def test_a_long_history_continues_as_new_with_its_state(eager_server: Stack) -> None:
    stack = eager_server
    task = unique("Compute 6*7 and call the service")
    stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}},
            {"id": "s2", "tool": "flaky", "args": {"key": task, "failures": 99}},
        ),
        scripted_plan(
            {
                "id": "s3",
                "tool": "calculator",
                "args": {"expression": "{{s1}} + 1"},
                "depends_on": ["s1"],
            }
        ),
    )
    handle = await start_task(stack.client, TaskRequest(task=task))
    result = await handle.result()

    assert result.status == TaskStatus.COMPLETED
    assert [(s.step_id, s.status) for s in result.steps] == [
        ("s1", StepStatus.SUCCEEDED),
        ("s2", StepStatus.FAILED),
        ("s3", StepStatus.SUCCEEDED),
    ]
    assert result.steps[2].output is not None and result.steps[2].output["value"] == 43
    assert result.replans == 1
    # both runs' plans are in the ledger of the run that finished (the first run's entries
    # carried compacted: one per model, tool and outcome)
    planner = [e for e in result.ledger.entries if e.kind == "model" and e.role == "planner"]
    assert sum(e.calls for e in planner) == 2
    # it really was another run: the first one ended by continuing as new
    first = stack.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    assert (await first.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW
    progress = await handle.query("status", result_type=TaskProgress)
    assert any(e.startswith("continued as new (run 2)") for e in progress.events)
    # the second run's plan request: version 2, with the first run's summary in its context
    [plan_request] = [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for e in (await handle.fetch_history()).events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "plan"
    ]
    assert plan_request["version"] == 2
    assert any(c.startswith("earlier in this task (") for c in plan_request["context"])
