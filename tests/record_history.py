"""Record the histories of real AgentTask runs into tests/histories/ for the replay test.

Record a new scenario after a deliberate change to the workflow's command sequence (behind
`workflow.patched()`; say so in review), and keep the old recordings (tests/test_replay.py):
    .venv/bin/python -m tests.record_history ask_human subagent_delegation   # only these
    .venv/bin/python -m tests.record_history                      # every scenario
Each scenario is a real run on a dev server with real workers and the scripted model, under a
fixed workflow id, history-<name>, which tests/test_replay.py replays it under again (its file
is <name>.json; a child's and a later run's files add a suffix); a person's part is played
through the task's Updates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle

from keel import durable
from keel.client import start_task
from keel.contracts import (
    Approval,
    Budget,
    Document,
    HumanAnswer,
    HumanPolicy,
    Memorized,
    MemorizeRequest,
    PendingRequest,
    Rejection,
    TaskRequest,
    TaskResult,
    TaskStatus,
)
from keel.testing import Stack, eventually, scripted_plan
from tests.conftest import (
    QUESTION_STEP,
    SQUARE_STEP,
    TRANSFER_STEP,
    counting_chains,
    own_stack,
)

HISTORIES = Path(__file__).parent / "histories"
# Scripts answer every task that contains their text: no task text here may contain another.
SCENARIOS = {
    # a plan with parallel steps, one failing, a re-plan, synthesis and recall
    "replan_after_tool_failure": (
        "Read missing.md and compute 6*7",
        [
            '{"steps": [{"id": "s1", "tool": "read_file", "args": {"path": "missing.md"},'
            ' "depends_on": []}, {"id": "s2", "tool": "calculator",'
            ' "args": {"expression": "6*7"}, "depends_on": []}]}',
            '{"steps": [{"id": "s1", "tool": "read_file", "args": {"path": "handbook.md"},'
            ' "depends_on": []}]}',
        ],
    ),
    # lookahead: one branch runs, the other is skipped by its condition
    "lookahead_branches": (
        "Find what the docs say about rollbacks",
        [
            '{"steps": [{"id": "s1", "tool": "search_docs", "args": {"query": "rollback"},'
            ' "depends_on": []}, {"id": "s2", "tool": "read_file",'
            ' "args": {"path": "{{s1}}"}, "depends_on": ["s1"],'
            ' "when": "len(s1.matches) == 0"}, {"id": "s3", "tool": "calculator",'
            ' "args": {"expression": "15*60"}, "depends_on": ["s1"],'
            ' "when": "s1.matches[0].path == \'handbook.md\'"}]}',
        ],
    ),
    # memory: a cached reasoner call, facts extracted and remembered
    "memory_facts_and_cache": (
        "My preferred language is Go. Explain closures in my preferred language",
        [],
    ),
}
REACT_SCENARIOS = {"react_loop": "Compute 12*12 and read report.md"}

# continue_as_new_mid_plan: the server suggests continuing as new after this many events, well
# inside a plan of STEPS steps (WIDTH chains side by side), so the first run stops mid-plan and
# the second finishes the plan with a history of the same bound.
SUGGEST_AT = 150
STEPS = 40
WIDTH = 4
# Far past the sandbox's wall limit (10 s): the cancel, not the limit, ends the step.
SLEEPER = "import time\ntime.sleep(3600)\n"

Handle = WorkflowHandle[Any, TaskResult]
Recorder = Callable[[Stack, str], Awaitable[None]]
# name: (the dev server's extra flags, how the run is driven and saved)
RECORDERS: dict[str, tuple[tuple[str, ...], Recorder]] = {}


def recorder(name: str, *flags: str) -> Callable[[Recorder], Recorder]:
    def register(how: Recorder) -> Recorder:
        RECORDERS[name] = (flags, how)
        return how

    return register


async def _start(stack: Stack, name: str, request: TaskRequest, *plans: str) -> Handle:
    stack.model.script(request.task, "plan", *plans)
    return await start_task(stack.client, request, workflow_id=f"history-{name}")


async def _save(handle: Handle, name: str) -> None:
    """The history of the handle's run (the run it is bound to, else the latest)."""
    history = await handle.fetch_history()
    path = HISTORIES / f"{name}.json"
    path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    print(f"recorded {path.name}: {len(history.events)} events")


async def _ended(handle: Handle, *expected: TaskStatus) -> TaskResult:
    """The result, which must be one of the expected outcomes: a recording of another path
    than the scenario's would test the wrong thing."""
    result = await handle.result()
    if result.status not in expected:
        raise RuntimeError(f"{handle.id} ended {result.status.value}: {result.error}")
    return result


async def _waiting(handle: Handle, request_id: str, escalated: bool = False) -> None:
    """Until the task waits for a person's decision on `request_id` (and, with `escalated`,
    has told someone that nobody decided in time)."""

    async def found() -> bool:
        pending = await handle.query("pending", result_type=list[PendingRequest])
        return any(p.id == request_id and (p.escalated or not escalated) for p in pending)

    await eventually(found, f"{handle.id} to wait for a person on {request_id}", timeout_s=60)


def _unattended(request: TaskRequest, plans: list[str]) -> Recorder:
    """A run that needs nobody: started, awaited, saved."""

    async def how(stack: Stack, name: str) -> None:
        handle = await _start(stack, name, request, *plans)
        await handle.result()
        await _save(handle, name)

    return how


for _name, (_task, _plans) in SCENARIOS.items():
    RECORDERS[_name] = ((), _unattended(TaskRequest(task=_task), _plans))
for _name, _task in REACT_SCENARIOS.items():
    RECORDERS[_name] = ((), _unattended(TaskRequest(task=_task, strategy="react"), []))


def _decided(
    request: TaskRequest,
    plans: list[str],
    waits_on: str,
    update: str,
    decision: Approval | Rejection | HumanAnswer,
    *ended: TaskStatus,
    escalated: bool = False,
) -> Recorder:
    """A run that waits for a person on `waits_on` (after telling someone, with
    `escalated`), gets the decision through the Update, and ends one of the `ended` ways."""

    async def how(stack: Stack, name: str) -> None:
        handle = await _start(stack, name, request, *plans)
        await _waiting(handle, waits_on, escalated)
        await handle.execute_update(update, decision)
        await _ended(handle, *ended)
        await _save(handle, name)

    return how


DONE = TaskStatus.COMPLETED
# a guarded step waits, is approved, runs
RECORDERS["approval_granted"] = (
    (),
    _decided(
        TaskRequest(task="Send bob five dollars for lunch"),
        [scripted_plan(TRANSFER_STEP)],
        "s1",
        "approve",
        Approval(step_id="s1", by="carol"),
        DONE,
    ),
)
# a guarded step is rejected; the reason reaches the re-plan, whose plan runs
RECORDERS["approval_rejected"] = (
    (),
    _decided(
        TaskRequest(task="Pay bob five dollars, or say why not"),
        [
            scripted_plan(TRANSFER_STEP),
            scripted_plan({"id": "s2", "tool": "calculator", "args": {"expression": "5*1"}}),
        ],
        "s1",
        "reject",
        Rejection(step_id="s1", reason="too risky", by="dan"),
        DONE,
        TaskStatus.FAILED,
    ),
)
# a plan expected to cost more than the policy's threshold waits for step 'plan'
RECORDERS["plan_approval"] = (
    (),
    _decided(
        TaskRequest(
            task="Work out 31*17 once someone agrees",
            human=HumanPolicy(approve_plans_above_usd=0.000001),
        ),
        [scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "31*17"}})],
        "plan",
        "approve",
        Approval(step_id="plan", by="carol"),
        DONE,
    ),
)
# the plan asks a person; the next step uses the answer
RECORDERS["ask_human"] = (
    (),
    _decided(
        TaskRequest(
            task="Ask me for a number, then square what I say", human=HumanPolicy(questions=True)
        ),
        [scripted_plan(QUESTION_STEP, SQUARE_STEP)],
        "s1",
        "answer",
        HumanAnswer(text="7", by="erin"),
        DONE,
    ),
)
# nobody approves within the timeout: notify_human runs, then someone approves
RECORDERS["human_escalation"] = (
    (),
    _decided(
        TaskRequest(
            task="Wire bob five dollars (the approver is slow)",
            human=HumanPolicy(wait_timeout_s=1, on_timeout="escalate"),
        ),
        [scripted_plan(TRANSFER_STEP)],
        "s1",
        "approve",
        Approval(step_id="s1", by="frank"),
        DONE,
        escalated=True,
    ),
)


@recorder("subagent_delegation")
async def _subagent(stack: Stack, name: str) -> None:
    """A step delegated to the coder sub-agent: the parent's history (under the scenario's
    name: replaying it needs its workflow id, from which the child's id is derived) and the
    child's. (subagent.json is the same scenario recorded before the lean-history patch.)"""
    sub_task = "multiply nine by nine"
    request = TaskRequest(task="Have the coder multiply 9 by 9", budget=Budget(usd=0.05))
    delegate = {"id": "s1", "tool": "coder", "args": {"task": sub_task}}
    stack.model.script(
        sub_task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "9*9"}}),
    )
    handle = await _start(stack, name, request, scripted_plan(delegate))
    await _ended(handle, TaskStatus.COMPLETED)
    await _save(handle, name)
    child = stack.client.get_workflow_handle(f"{handle.id}.coder.v1.s1", result_type=TaskResult)
    await _ended(child, TaskStatus.COMPLETED)
    await _save(child, f"{name}_child")


@recorder("model_escalation")
async def _model_escalation(stack: Stack, name: str) -> None:
    """The planner's plan is invalid (an unknown tool); the escalation model's plan runs."""
    request = TaskRequest(task="Compute 8*8 with whatever tool fits")
    invalid = scripted_plan({"id": "s1", "tool": "teleport", "args": {"to": "the answer"}})
    valid = scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "8*8"}})
    handle = await _start(stack, name, request, invalid, valid)
    result = await _ended(handle, TaskStatus.COMPLETED)
    if result.plan is None or result.plan.model != "scripted-large":
        raise RuntimeError(f"the last plan was not the escalation model's: {result.plan}")
    await _save(handle, name)


@recorder("cancelled_mid_step")
async def _cancelled_mid_step(stack: Stack, name: str) -> None:
    """The task is cancelled while its sandboxed tool runs; it ends cancelled."""
    request = TaskRequest(task="Run a computation that never ends")
    step = {"id": "s1", "tool": "run_python", "args": {"code": SLEEPER}}
    handle = await _start(stack, name, request, scripted_plan(step))

    async def tool_running() -> bool:
        pending = (await handle.describe()).raw_description.pending_activities
        return any(
            a.activity_type.name == "tool.run_python"
            and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            for a in pending
        )

    await eventually(tool_running, "the run_python step to start", timeout_s=60)
    await handle.cancel()
    with contextlib.suppress(WorkflowFailureError):  # how it ended is checked next
        await handle.result()
    status = (await handle.describe()).status
    if status != WorkflowExecutionStatus.CANCELED:
        raise RuntimeError(f"{handle.id} ended {status}, not cancelled")
    await _save(handle, name)


@recorder(
    "continue_as_new_mid_plan",
    "--dynamic-config-value",
    f"limit.historyCount.suggestContinueAsNew={SUGGEST_AT}",
)
async def _continue_as_new_mid_plan(stack: Stack, name: str) -> None:
    """A plan too long for one run's history: the first run (ends continued as new, in the
    middle of the plan) and the second (starts from the carried state)."""
    task = f"Count to {STEPS} in {WIDTH} chains"
    chain = counting_chains(STEPS, WIDTH)
    request = TaskRequest(task=task, max_plan_steps=STEPS, budget=Budget(usd=1.0))
    handle = await _start(stack, name, request, scripted_plan(*chain))
    await _ended(handle, TaskStatus.COMPLETED)

    first = stack.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    last = (await first.fetch_history()).events[-1]
    if not last.HasField("workflow_execution_continued_as_new_event_attributes"):
        raise RuntimeError(f"{handle.id} completed in one run: raise STEPS or lower SUGGEST_AT")
    continued = last.workflow_execution_continued_as_new_event_attributes
    carried = json.loads(continued.input.payloads[0].data)["carried"]
    if not carried.get("plan"):
        raise RuntimeError(f"{handle.id} continued as new between plans, not mid-plan")
    await _save(first, f"{name}_run1")
    second = stack.client.get_workflow_handle(handle.id, run_id=continued.new_execution_run_id)
    await _save(second, f"{name}_run2")


@recorder("reused_step_readies_its_dependant")
async def _reused_step_readies_its_dependant(stack: Stack, name: str) -> None:
    """A re-plan repeats a finished read-only step (reused, no call) and builds on it: the
    dependant starts at once though nothing else runs (the patch in workflows/execution.py;
    the same scenario recorded before the patch is ..._before_patch.json, where it never
    started)."""
    request = TaskRequest(task="Work out 6*7, read absent.md, then add one")
    first = scripted_plan(
        {"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}},
        {"id": "s2", "tool": "read_file", "args": {"path": "absent.md"}},
    )
    second = scripted_plan(
        {"id": "s3", "tool": "calculator", "args": {"expression": "6*7"}},
        {
            "id": "s4",
            "tool": "calculator",
            "args": {"expression": "{{s3}} + 1"},
            "depends_on": ["s3"],
        },
    )
    handle = await _start(stack, name, request, first, second)
    result = await _ended(handle, TaskStatus.COMPLETED)
    if "s4" not in {r.step_id for r in result.steps}:
        raise RuntimeError(f"{handle.id}: s4 never ran")
    await _save(handle, name)


@recorder("memorize_documents")
async def _memorize_documents(stack: Stack, name: str) -> None:
    """The MemorizeDocuments workflow: one remember_document activity per document."""
    documents = [
        Document(source="a.md", text="Deploys happen on Tuesdays."),
        Document(source="b.md", text="Rollbacks need two approvals."),
    ]
    handle = await stack.client.start_workflow(
        durable.MEMORIZE_DOCUMENTS,
        MemorizeRequest(user_id="history", documents=documents),
        id=f"history-{name}",
        task_queue=stack.components.queues.agent,
        result_type=Memorized,
    )
    await handle.result()
    await _save(handle, name)  # type: ignore[arg-type]


async def record(names: list[str]) -> None:
    """Each distinct dev-server configuration gets its own server and workers, once."""
    with tempfile.TemporaryDirectory() as home:
        configs = list(dict.fromkeys(RECORDERS[n][0] for n in names))
        for i, flags in enumerate(configs):
            async with own_stack(Path(home) / str(i), *flags) as stack:
                for name in names:
                    if RECORDERS[name][0] == flags:
                        await RECORDERS[name][1](stack, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"record only these: {', '.join(RECORDERS)}"
    )
    names = parser.parse_args().names or list(RECORDERS)
    unknown = [n for n in names if n not in RECORDERS]
    if unknown:
        parser.error(f"no scenario named {', '.join(unknown)}")
    asyncio.run(record(names))


if __name__ == "__main__":
    main()
