"""No silent waits: a task whose work no worker takes is named within seconds, with the queue
and the command that starts its worker; a killed planner worker costs seconds (heartbeats),
not the model activities' five-minute timeout."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client
from temporalio.worker import Worker

from keel._queues import Queues
from keel._stalls import Stall
from keel.client import start_task
from keel.contracts import TaskRequest, TaskStatus
from keel.testing import Stack, eventually
from tests.conftest import REPO, scripted_components, unique
from workers.process import build_all, workers_running

CLI_TIMEOUT_S = 120


def _env(stack: Stack, queues: Queues, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return env | {
        "KEEL_TEMPORAL_ADDRESS": stack.address,
        "KEEL_HOME": str(stack.settings.home),
        "KEEL_QUEUE_PREFIX": queues.prefix,
        **extra,
    }


async def _keel(stack: Stack, queues: Queues, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel.cli", *args, cwd=REPO, env=_env(stack, queues),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _finished(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _workers(stack: Stack, queues: Queues, *names: str) -> list[Worker]:
    components, _ = scripted_components(stack.settings, queues)
    components._vectors = stack.components.vectors  # one Qdrant client per folder
    return build_all(stack.client, components, names)


def test_a_stall_names_the_worker_that_serves_its_queue() -> None:
    line = Stall("acme-keel-planner", "activity plan", 7.2, None).line()
    assert line == (
        "activity plan has waited 7 s on task queue acme-keel-planner (no worker has polled "
        "it); start a worker with `keel worker planner` (or `keel dev`)"
    )
    assert "its last poll was 42 s ago: its workers are gone or busy" in (
        Stall("keel-memory", "activity recall", 9, 42.4).line()
    )
    assert Stall("keel-http-github", "activity tool.http_get", 9, None).worker == "tools"
    assert Stall("keel-agent", "the workflow task", 9, None).worker == "agent"


async def test_keel_run_names_the_missing_worker_and_goes_on_once_one_runs(stack: Stack) -> None:
    queues = Queues(f"no-planner-{uuid.uuid4().hex[:6]}-")
    async with workers_running(_workers(stack, queues, "agent", "tools", "memory", "llm")):
        process = await _keel(stack, queues, "run", unique("What is 6*7?"))
        assert process.stderr is not None and process.stdout is not None
        warning = (await asyncio.wait_for(process.stdout.readuntil(b"keel dev`)\n"), 60)).decode()
        assert re.search(
            rf"⚠ activity plan has waited \d+ s on task queue {queues.planner} \(no worker "
            r"has polled it\); start a worker with `keel worker planner` \(or `keel dev`\)",
            warning,
        ), warning
        async with workers_running(_workers(stack, queues, "planner")):
            code, out, err = await _finished(process)
    assert code == 0, err
    assert "Status: completed" in out and "42" in out


async def test_keel_run_stops_at_its_timeout_and_the_task_goes_on(stack: Stack) -> None:
    queues = Queues(f"no-planner-{uuid.uuid4().hex[:6]}-")
    async with workers_running(_workers(stack, queues, "agent", "tools", "memory", "llm")):
        process = await _keel(
            stack, queues, "run", unique("What is 6*7?"), "--json", "--timeout", "8"
        )
        code, out, err = await _finished(process)
        [warning, error] = err.strip().splitlines()
        assert code == 2 and out == ""
        assert f"task queue {queues.planner} (no worker has polled it)" in warning
        assert error.startswith("keel: error: stopped waiting after 8 s (--timeout); task keel-")
        workflow_id = error.split("task ")[1].split()[0]
        async with workers_running(_workers(stack, queues, "planner")):
            handle = stack.client.get_workflow_handle(workflow_id)
            result = await asyncio.wait_for(handle.result(), 60)
    assert result["status"] == TaskStatus.COMPLETED.value


async def test_approve_and_status_say_when_no_worker_answers_the_task(stack: Stack) -> None:
    queues = Queues(f"no-agent-{uuid.uuid4().hex[:6]}-")
    handle = await start_task(stack.client, TaskRequest(task=unique("hello")), queues=queues)

    code, _, err = await _finished(
        await _keel(stack, queues, "approve", handle.id, "s1", "--timeout", "8")
    )
    [warning, error] = err.strip().splitlines()
    assert code == 2
    assert warning == (
        f"⚠ task {handle.id} has waited 6 s on task queue {queues.agent} (no worker has "
        "polled it); start a worker with `keel worker agent` (or `keel dev`)"
    )
    assert error == (
        f"keel: error: no answer from task {handle.id} within 8 s (--timeout); the request "
        f"may still reach it once its worker runs: `keel status {handle.id}` shows it"
    )

    code, out, err = await _finished(
        await _keel(stack, queues, "status", handle.id, "--timeout", "8")
    )
    assert code == 2 and out == f"Workflow {handle.id}: RUNNING\n"
    assert f"task queue {queues.agent} (no worker has polled it)" in err
    await handle.terminate("test over")


@asynccontextmanager
async def _planner_process(
    stack: Stack, queues: Queues
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`keel worker planner` on the real local model, in its own process."""
    env = _env(stack, queues, KEEL_PLANNER_MODEL="llamacpp", KEEL_REASONER_MODEL="scripted")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel.cli", "worker", "planner", cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _plan_started_by(client: Client, workflow_id: str, pid: int) -> bool:
    described = await client.get_workflow_handle(workflow_id).describe()
    return any(
        a.activity_type.name == "plan"
        and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        and a.last_worker_identity.startswith(f"{pid}@")
        for a in described.raw_description.pending_activities
    )


async def test_a_planner_worker_killed_mid_plan_costs_seconds_not_the_timeout(
    stack: Stack,
) -> None:
    queues = Queues(f"planner-kill-{uuid.uuid4().hex[:6]}-")
    async with workers_running(_workers(stack, queues, "agent", "tools", "memory", "llm")):
        async with _planner_process(stack, queues) as planner:
            handle = await start_task(
                stack.client, TaskRequest(task=unique("What is 6*7?")), queues=queues
            )
            await eventually(
                lambda: _plan_started_by(stack.client, handle.id, planner.pid),
                "the planner process to start planning",
                timeout_s=60,
            )
            planner.send_signal(signal.SIGKILL)
        # Another planner takes the retry once the heartbeats stop (15 s), long before the
        # activity's 5-minute start-to-close timeout would have let it.
        async with workers_running(_workers(stack, queues, "planner")):
            result = await asyncio.wait_for(handle.result(), timeout=90)

    assert result.status == TaskStatus.COMPLETED
    scheduled = [
        e.activity_task_scheduled_event_attributes
        async for e in handle.fetch_history_events()
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    plan = next(a for a in scheduled if a.activity_type.name == "plan")
    assert plan.heartbeat_timeout.ToTimedelta() == timedelta(seconds=15)
    assert all(
        a.heartbeat_timeout.ToTimedelta() <= timedelta(seconds=15)
        for a in scheduled
        if a.activity_type.name in ("plan", "synthesize", "extract_facts", "react_step")
    )


async def test_a_bad_timeout_is_refused_before_anything_starts(stack: Stack) -> None:
    queues = Queues(f"bad-timeout-{uuid.uuid4().hex[:6]}-")
    for command in (["run", "hi"], ["status", "keel-x"], ["approve", "keel-x", "s1"]):
        code, out, err = await _finished(await _keel(stack, queues, *command, "--timeout", "0"))
        assert (code, out, err) == (
            2,
            "",
            "keel: error: --timeout 0.0: give a number of seconds above 0\n",
        ), command  # nothing on stdout: no "Started task ..." either
