"""`keel pending / approve / reject / answer / cancel` and `keel run`'s human-policy flags, as
a person uses them: the real `keel` command in a subprocess against the session's dev server
and workers."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError

from keel import _search_attributes as sa
from keel.client import start_task
from keel.contracts import (
    HumanPolicy,
    PendingRequest,
    StepStatus,
    TaskProgress,
    TaskRequest,
    TaskResult,
    TaskStatus,
)
from keel.testing import Stack, eventually, scripted_plan
from tests.conftest import QUESTION_STEP, REPO, SQUARE_STEP, TRANSFER_STEP, TRANSFERS, unique

CLI_TIMEOUT_S = 60


def _env(stack: Stack) -> dict[str, str]:
    """The session's server for the `keel` subprocess, and nothing else of this machine's
    KEEL_* configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return env | {"KEEL_TEMPORAL_ADDRESS": stack.address, "KEEL_HOME": str(stack.settings.home)}


async def _spawn(stack: Stack, *args: str) -> asyncio.subprocess.Process:
    # asyncio, not subprocess.run: the workers the command talks to run on this event loop
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel.cli", *args, cwd=REPO, env=_env(stack),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def keel(stack: Stack, *args: str) -> tuple[int, str, str]:
    """Run `keel ARGS`: exit code, stdout, stderr."""
    process = await _spawn(stack, *args)
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"`keel {' '.join(args)}` did not finish in {CLI_TIMEOUT_S} s"
        ) from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def keel_ok(stack: Stack, *args: str) -> str:
    code, out, err = await keel(stack, *args)
    assert code == 0, f"`keel {' '.join(args)}` exited {code}: {err or out}"
    return out


async def keel_refused(stack: Stack, *args: str) -> str:
    """A command refused with one line on stderr and exit code 2; that line."""
    code, out, err = await keel(stack, *args)
    assert code == 2, f"`keel {' '.join(args)}` exited {code}: {out}{err}"
    line = err.strip()
    assert line.startswith("keel: error: ") and "\n" not in line, err
    return line.removeprefix("keel: error: ")


async def waiting_for(handle: WorkflowHandle[Any, TaskResult], request_id: str) -> None:
    async def pending() -> bool:
        found = await handle.query("pending", result_type=list[PendingRequest])
        return any(p.id == request_id for p in found)

    await eventually(pending, f"the task to wait for a decision on {request_id}")


async def start_waiting(stack: Stack, user: str, *plans: str) -> WorkflowHandle[Any, TaskResult]:
    """A task whose step s1 waits for approval."""
    task = unique("Send bob five dollars")
    stack.model.script(task, "plan", *plans)
    request = TaskRequest(task=task, user_id=user)
    handle = await start_task(stack.client, request)
    await waiting_for(handle, "s1")
    return handle


async def test_pending_lists_a_waiting_task_and_approve_lets_it_run(stack: Stack) -> None:
    user = f"alice-{uuid.uuid4().hex[:8]}"
    handle = await start_waiting(stack, user, scripted_plan(TRANSFER_STEP))
    before = len(TRANSFERS)

    async def listed() -> str | None:
        out = await keel_ok(stack, "pending", "--user", user)
        return out if handle.id in out else None

    out = await eventually(listed, "`keel pending` to list the waiting task")
    [line] = [line for line in out.splitlines() if line.startswith(handle.id)]
    spent = (await handle.query("status", result_type=TaskProgress)).total_usd
    assert f"  user {user}  awaiting_approval  ${spent:.6f}  " in line
    assert line.endswith('approval s1: transfer(to="bob", usd=5)')
    assert "keel approve ID STEP" in out

    status = await keel_ok(stack, "status", handle.id)
    assert "Status: awaiting_approval" in status
    assert (
        f'waiting for approval of s1: transfer(to="bob", usd=5) — approve with: '
        f"keel approve {handle.id} s1" in status
    )

    refused = await keel_refused(stack, "approve", handle.id, "s9")
    assert refused == "step 's9' is not waiting for approval; waiting: s1"
    assert len(TRANSFERS) == before

    assert await keel_ok(stack, "approve", handle.id, "s1", "--by", "carol") == (
        f"{handle.id}: approved s1\n"
    )
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED and result.human_interventions == 1
    assert await keel_refused(stack, "approve", handle.id, "s1") == (
        f"task {handle.id!r} has already ended (COMPLETED): it waits for no decision"
    )
    assert len(TRANSFERS) == before + 1
    assert (
        "s1: approved by carol" in (await handle.query("status", result_type=TaskProgress)).events
    )
    out = await keel_ok(stack, "pending", "--user", user)
    assert out == f"No task of user {user} is waiting for a person.\n"


async def test_reject_needs_a_reason_and_the_planner_reads_it(stack: Stack) -> None:
    calculator = {"id": "s2", "tool": "calculator", "args": {"expression": "5*1"}}
    handle = await start_waiting(
        stack, "anonymous", scripted_plan(TRANSFER_STEP), scripted_plan(calculator)
    )
    code, _, err = await keel(stack, "reject", handle.id, "s1")
    assert code == 2 and "the following arguments are required: --reason" in err
    refused = await keel_refused(stack, "reject", handle.id, "s1", "--reason", "")
    assert refused.startswith("invalid rejection: reason: String should have at least 1 char")

    out = await keel_ok(stack, "reject", handle.id, "s1", "--reason", "too risky", "--by", "dan")
    assert out == f"{handle.id}: rejected s1\n"
    result = await handle.result()
    assert [(s.step_id, s.status) for s in result.steps] == [
        ("s1", StepStatus.FAILED),
        ("s2", StepStatus.SUCCEEDED),
    ]
    assert result.steps[0].error == "rejected by dan: too risky"


async def test_answer_a_question_and_refusals_are_one_line(stack: Stack) -> None:
    task = unique("Ask me which number to square, then square it")
    stack.model.script(task, "plan", scripted_plan(QUESTION_STEP, SQUARE_STEP))
    request = TaskRequest(task=task, human=HumanPolicy(questions=True))
    handle = await start_task(stack.client, request)
    await waiting_for(handle, "s1")

    status = await keel_ok(stack, "status", handle.id)
    assert "Status: awaiting_answer" in status
    assert (
        f"waiting for an answer to s1: Which number? — answer with: "
        f"keel answer {handle.id} TEXT --question s1" in status
    )
    assert await keel_refused(stack, "answer", handle.id, "7", "--question", "q") == (
        "no open question 'q'; open: s1"
    )
    assert await keel_refused(stack, "approve", handle.id, "s1") == (
        "step 's1' is not waiting for approval; no step is waiting"
    )
    refused = await keel_refused(stack, "answer", handle.id, "")
    assert refused.startswith("invalid answer: text: String should have at least 1 character")

    assert await keel_ok(stack, "answer", handle.id, "7", "--by", "erin") == (
        f"{handle.id}: answered s1\n"
    )
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    assert result.steps[1].output is not None and result.steps[1].output["value"] == 49


async def test_unknown_tasks_and_bad_input_are_refused_in_one_line(stack: Stack) -> None:
    missing = f"no-such-task-{uuid.uuid4().hex[:8]}"
    for command in (
        ("approve", missing, "s1"),
        ("reject", missing, "s1", "--reason", "no"),
        ("answer", missing, "7"),
    ):
        refused = await keel_refused(stack, *command)
        assert refused == (
            f"no task {missing!r} on {stack.address}; "
            "`keel pending` lists the tasks waiting for a person"
        )
    assert (await keel_refused(stack, "cancel", missing)).startswith(f"no task {missing!r} on ")
    assert (await keel_refused(stack, "pending", "--user", 'x" OR "1"="1')).startswith(
        '--user \'x" OR "1"="1\': quotes, backslashes and control characters cannot be'
    )
    assert await keel_refused(stack, "run", "hi", "--wait-timeout", "0") == (
        "--wait-timeout 0.0: Input should be greater than 0"
    )
    assert await keel_refused(stack, "run", "hi", "--approve-above", "-1") == (
        "--approve-above -1.0: Input should be greater than or equal to 0"
    )
    code, _, err = await keel(stack, "run", "hi", "--on-timeout", "wait")
    assert code == 2 and "argument --on-timeout: invalid choice: 'wait'" in err


async def test_cancel_waits_for_the_task_to_end_and_says_what_it_spent(stack: Stack) -> None:
    handle = await start_waiting(stack, "anonymous", scripted_plan(TRANSFER_STEP))
    spent = (await handle.query("status", result_type=TaskProgress)).total_usd

    out = await keel_ok(stack, "cancel", handle.id)
    assert out.splitlines() == [
        f"Cancelling {handle.id}: waiting for its in-flight work to stop",
        f"Task {handle.id}: cancelled (Temporal: CANCELED); spent ${spent:.6f}",
    ]
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.CANCELED
    assert described.typed_search_attributes.get(sa.STATUS) == "cancelled"
    assert await keel_refused(stack, "cancel", handle.id) == (
        f"task {handle.id!r} has already ended (CANCELED): nothing to cancel"
    )
    assert await keel_refused(stack, "approve", handle.id, "s1") == (
        f"task {handle.id!r} has already ended (CANCELED): it waits for no decision"
    )
    status = await keel_ok(stack, "status", handle.id)
    assert "Status: cancelled" in status and "No result: " in status


async def _line_matching(
    process: asyncio.subprocess.Process, pattern: str, seen: list[str]
) -> re.Match[str]:
    """Read the process's stdout until a line matches `pattern` (30 s at most)."""
    assert process.stdout is not None
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        left = deadline - asyncio.get_running_loop().time()
        try:
            raw = await asyncio.wait_for(process.stdout.readline(), max(left, 0.01))
        except TimeoutError:
            raw = b""
        if not raw:
            raise AssertionError(f"no line matching {pattern!r} in:\n" + "".join(seen))
        seen.append(raw.decode())
        if found := re.search(pattern, seen[-1]):
            return found


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_keel_run_shows_what_it_waits_for_and_how_to_decide(stack: Stack) -> None:
    """`keel run --approve-above` waits for the plan, then for the guarded step; each time it
    prints the command that decides, and running that command lets it go on."""
    task = unique("Send bob five dollars, with a cost check")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    process = await _spawn(stack, "run", task, "--approve-above", "0.0005")
    seen: list[str] = []
    try:
        for step, shown in (
            ("plan", r"plan v1, expected \$0\.\d+ \(over \$0\.0005\): "),
            ("s1", ""),
        ):
            found = await _line_matching(
                process,
                rf"⏸ waiting for approval of {step}: {shown}.*— approve with: "
                rf"(keel approve (keel-\w+) {step}) \(or: keel reject \2 {step} --reason TEXT\)",
                seen,
            )
            await keel_ok(stack, *found.group(1).split()[1:])
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    finally:
        await _stop(process)
    text = "".join(seen) + out.decode()
    assert process.returncode == 0, text + err.decode()
    assert "Status: completed" in text
    assert "  · plan: approved" in text and "  · s1: approved" in text


async def test_keel_run_passes_the_timeout_policy(stack: Stack) -> None:
    task = unique("Send bob five dollars (nobody answers)")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    code, out, err = await keel(
        stack, "run", task, "--wait-timeout", "1", "--on-timeout", "fail", "--json"
    )
    assert code == 3, out + err
    assert '"status": "timed_out_waiting"' in out
    # the answer as JSON: the arguments' quotes escaped
    assert r"no one answered the approval for s1 (transfer(to=\"bob\", usd=5)) within 1 s" in out


async def test_keel_cancel_no_wait_ends_a_task_that_keel_run_follows(stack: Stack) -> None:
    task = unique("Send bob five dollars (then changed my mind)")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    process = await _spawn(stack, "run", task)
    seen: list[str] = []
    try:
        found = await _line_matching(process, r"— approve with: keel approve (keel-\w+) s1 ", seen)
        workflow_id = found.group(1)
        out = await keel_ok(stack, "cancel", workflow_id, "--no-wait")
        assert out == (
            f"Cancellation of {workflow_id} requested; `keel status {workflow_id}` shows when "
            "it has stopped\n"
        )
        run_out, _ = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    finally:
        await _stop(process)
    assert process.returncode == 3, "".join(seen) + run_out.decode()
    handle = stack.client.get_workflow_handle(workflow_id, result_type=TaskResult)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    spent = (await handle.query("status", result_type=TaskProgress)).total_usd
    assert run_out.decode().splitlines()[-1] == (
        f"Task {workflow_id} was cancelled; spent ${spent:.6f}"
    )
