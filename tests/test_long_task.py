"""A task of 500+ steps runs to completion across continue-as-new, with every run's history
bounded and the state carried between runs compact."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.client import WorkflowExecutionStatus

from keel.client import start_task, watch_task
from keel.contracts import Budget, StepStatus, TaskRequest, TaskStatus
from keel.testing import Stack, scripted_plan
from tests.conftest import counting_chains, own_stack, unique

STEPS = 520
WIDTH = 4
SUGGEST_AT = 400  # events; Temporal's default is 4K, too many for a quick test
# After the suggestion the running step settles and the run continues as new: a few events.
HISTORY_BOUND = SUGGEST_AT + 40


@pytest.fixture(scope="module")
async def long_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    flags = ("--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={SUGGEST_AT}")
    async with own_stack(tmp_path_factory.mktemp("long"), *flags) as stack:
        yield stack


async def test_a_task_of_500_steps_completes_with_bounded_history(long_server: Stack) -> None:
    stack = long_server
    task = unique(f"Count to {STEPS}, one step at a time")
    chain = counting_chains(STEPS, WIDTH)
    stack.model.script(task, "plan", scripted_plan(*chain))
    # writing a plan this long takes many output tokens: more than the default budget buys
    request = TaskRequest(task=task, max_plan_steps=STEPS, budget=Budget(usd=1.0))
    handle = await start_task(stack.client, request)
    result = await handle.result()

    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.steps_total == STEPS
    [last] = [r for r in result.steps if r.step_id == f"s{STEPS}"]
    assert last.status == StepStatus.SUCCEEDED
    # every step of its chain ran, in order
    assert last.output is not None and last.output["value"] == WIDTH + STEPS // WIDTH - 1
    assert len(result.steps) < STEPS // 2  # the last run's and a few before, not all of them

    # every tool call is in the ledger, summed into a handful of entries
    calculator = [e for e in result.ledger.entries if e.name == "calculator"]
    assert sum(e.calls for e in calculator) == STEPS
    assert len(result.ledger.entries) < STEPS // 5  # the last run's calls, and sums

    runs = sorted(
        [run async for run in stack.client.list_workflows(f'WorkflowId="{handle.id}"')],
        key=lambda run: run.start_time,
    )
    assert len(runs) >= 4
    assert [r.status for r in runs] == [WorkflowExecutionStatus.CONTINUED_AS_NEW] * (
        len(runs) - 1
    ) + [WorkflowExecutionStatus.COMPLETED]
    carried = []
    for run in runs:
        history = await stack.client.get_workflow_handle(
            handle.id, run_id=run.run_id
        ).fetch_history()
        assert len(history.events) <= HISTORY_BOUND
        started = history.events[0].workflow_execution_started_event_attributes
        carried.append(len(started.input.payloads[0].data))
    # what a run carries is the steps still to run plus a bounded rest: it shrinks run by
    # run instead of growing with what was done
    assert carried[1:] == sorted(carried[1:], reverse=True)
    assert carried[-1] < 30_000


async def test_a_watcher_follows_the_task_across_continue_as_new(long_server: Stack) -> None:
    """The watch Update in flight when a run continues as new is left unanswered; the watcher
    asks the next run and misses no count: events_total carries over."""
    stack = long_server
    steps = 240
    task = unique(f"Count to {steps}, watched")
    stack.model.script(task, "plan", scripted_plan(*counting_chains(steps, WIDTH)))
    request = TaskRequest(task=task, max_plan_steps=steps, budget=Budget(usd=1.0))
    handle = await start_task(stack.client, request)
    seen = [p async for p in watch_task(stack.client, handle.id)]
    result = await handle.result()

    assert result.status == TaskStatus.COMPLETED, result.error
    runs = [run async for run in stack.client.list_workflows(f'WorkflowId="{handle.id}"')]
    assert len(runs) >= 2  # it did continue as new
    totals = [p.events_total for p in seen]
    assert totals == sorted(set(totals))  # never backwards, never the same answer twice
    assert seen[-1].status == TaskStatus.COMPLETED
    assert any("continued as new" in e for p in seen for e in p.events)
    assert seen[-1].events[-1] == "finished: completed"
