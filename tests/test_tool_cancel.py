"""Cancelling a tool activity stops its tool, promptly and completely.

Each test runs a real tool activity (ToolActivities, as a worker registers it) in Temporal's
ActivityEnvironment, lets the tool get busy for a minute, then cancels the activity as a
worker does when its workflow cancels it, and checks that the activity heartbeated while it
ran, ended cancelled long before its work would have, and left nothing running: no
sandboxed process and no cgroup, no active query on the database, no open connection, no MCP
server process. (tests/test_cancel.py cancels a whole task on the dev server.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from activities.heartbeat import HEARTBEAT_S, heartbeat_interval
from activities.tools.activity import ToolActivities
from activities.tools.builtin import builtin_tools
from activities.tools.http import HttpApis, http_get_tool
from activities.tools.mcp_remote import discover_tools, load_servers
from activities.tools.registry import Tool, ToolRegistry
from keel.contracts import ToolCall
from keel.settings import Settings
from keel.testing import eventually
from sandbox.cgroups import Cgroups, running
from tests.postgres_server import PostgresServer
from tests.sandbox.conftest import MARK_READY, UID_BASE, ready_processes, sandbox_processes
from tests.test_sql_tool import reader_backends, sql_settings, wait_reader_gone

BUSY_S = 60  # what each tool would take, were it not cancelled
# A cancelled tool ends long before BUSY_S: the cancel stopped it, not its work ending (it
# takes milliseconds; the bound leaves room for a loaded machine).
CANCEL_S = BUSY_S / 4
WAIT_S = 30.0  # deadline for a tool to get busy
HEARTBEAT_TIMEOUT = timedelta(seconds=1.5)  # beats every 0.5 s: a third of it


@dataclasses.dataclass
class Running:
    """A tool activity running in an ActivityEnvironment, and the heartbeats it sent."""

    env: ActivityEnvironment
    task: asyncio.Task[Any]
    beats: list[float]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` (the activity runs meanwhile) until it holds."""

        async def check() -> bool:
            assert not self.task.done(), f"the activity ended before {what}: {self.task!r}"
            return condition()

        await eventually(check, what, WAIT_S)

    async def cancel(self) -> float:
        """Cancel the activity as a worker does on a cancel request; the seconds until it
        ended, which it must do by raising CancelledError."""
        started = time.monotonic()
        self.env.cancel()
        await asyncio.wait([self.task], timeout=CANCEL_S)
        took = time.monotonic() - started
        assert self.task.done(), "the activity was still running long after its cancel"
        assert self.task.cancelled(), f"the activity did not end cancelled: {self.task!r}"
        print(f"cancel -> activity end: {took * 1000:.0f} ms")  # shown with -s
        return took


def tool_call(name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(workflow_id="wf-cancel", step_id="s1", tool=name, args=args, max_usd=1.0)


def start(tools: list[Tool], name: str, args: dict[str, Any], settings: Settings) -> Running:
    """The tool activity `tool.<name>` of a worker, called with `args` under a heartbeat
    timeout of HEARTBEAT_TIMEOUT."""
    (tool,) = [t for t in tools if t.spec.name == name]
    (activity_fn,) = ToolActivities(ToolRegistry([tool]), settings).for_queue(tool.spec.queue)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=HEARTBEAT_TIMEOUT)
    beats: list[float] = []
    env.on_heartbeat = lambda *details: beats.append(time.monotonic())
    task = asyncio.ensure_future(env.run(activity_fn, tool_call(name, args)))
    return Running(env, task, beats)


def beating(run: Running) -> Callable[[], bool]:
    """Two heartbeats so far, closer than HEARTBEAT_S: a third of the heartbeat timeout."""

    def check() -> bool:
        if len(run.beats) < 2:
            return False
        gap = run.beats[-1] - run.beats[-2]
        assert gap < HEARTBEAT_S, f"heartbeats {gap:.2f} s apart"
        return True

    return check


# --- the heartbeat -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "interval"),
    [(None, HEARTBEAT_S), (timedelta(minutes=1), HEARTBEAT_S), (timedelta(seconds=1.5), 0.5)],
)
def test_the_heartbeat_interval_fits_the_heartbeat_timeout(
    timeout: timedelta | None, interval: float
) -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timeout)
    assert env.run(heartbeat_interval) == pytest.approx(interval)


async def test_a_quick_tool_sends_no_heartbeat(settings: Settings) -> None:
    run = start(builtin_tools(settings), "calculator", {"expression": "6 * 7"}, settings)
    output = await run.task
    assert output.output["value"] == 42
    assert run.beats == []


async def test_execute_still_works_outside_an_activity(settings: Settings) -> None:
    """The validated path, as the MCP server calls it: no activity, so no heartbeat."""
    assert not activity.in_activity()
    (tool,) = [t for t in builtin_tools(settings) if t.spec.name == "calculator"]
    call = tool_call("calculator", {"expression": "2 + 3"})
    output = await ToolActivities(ToolRegistry([tool]), settings).execute(tool, call)
    assert output.output["value"] == 5


# --- run_python: the sandbox ----------------------------------------------------------------


def sandbox_settings(settings: Settings) -> Settings:
    """This test session's uid range (tests/sandbox/conftest.py) and a wall limit far past
    the program's minute."""
    return settings.model_copy(update={"sandbox_uid": UID_BASE, "sandbox_wall_s": 4.0 * BUSY_S})


def run_cgroups() -> list[Path]:
    """This process's per-run cgroups still present."""
    groups = Cgroups.detect()
    return [] if groups is None else list(groups.bases["pids"].glob("run-*"))


async def test_cancelling_run_python_kills_its_sandbox(settings: Settings) -> None:
    mine = sandbox_settings(settings)
    # a daemon in a session of its own, and the program itself, each sleeping a minute
    code = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        {MARK_READY}\n        time.sleep({BUSY_S})\n    os._exit(0)\n"
        f"{MARK_READY}\ntime.sleep({BUSY_S})\n"
    )
    assert sandbox_processes() == []
    run = start(builtin_tools(mine), "run_python", {"code": code}, mine)
    await run.until(lambda: ready_processes() == 2, "sandboxed processes")
    await run.until(beating(run), "heartbeats")

    assert await run.cancel() < CANCEL_S
    assert sandbox_processes() == []  # gone by the time the activity ended
    assert run_cgroups() == []


async def test_cancelling_run_python_outside_an_activity_kills_its_sandbox(
    settings: Settings,
) -> None:
    """The stop lives in the tool, not in the activity: an MCP client's call (the validated
    path, no activity) that is cancelled kills its run as well."""
    mine = sandbox_settings(settings)
    (tool,) = [t for t in builtin_tools(mine) if t.spec.name == "run_python"]
    code = f"import time\n{MARK_READY}\ntime.sleep({BUSY_S})\n"
    call = tool_call("run_python", {"code": code})
    task = asyncio.ensure_future(ToolActivities(ToolRegistry([tool]), mine).execute(tool, call))
    deadline = time.monotonic() + WAIT_S
    while ready_processes() < 1:
        assert time.monotonic() < deadline and not task.done(), "the program never started"
        await asyncio.sleep(0.01)  # poll interval
    started = time.monotonic()
    task.cancel()
    await asyncio.wait([task], timeout=CANCEL_S)
    assert task.cancelled() and time.monotonic() - started < CANCEL_S
    assert sandbox_processes() == []
    assert run_cgroups() == []


# --- sql_query: the database ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


async def test_cancelling_sql_query_cancels_the_query_on_the_server(pg: PostgresServer) -> None:
    settings = sql_settings(pg, sql_timeout_ms=BUSY_S * 2000)
    query = f"SELECT pg_sleep({BUSY_S})"
    run = start(builtin_tools(settings), "sql_query", {"query": query}, settings)
    await run.until(lambda: reader_backends(pg, state="active") == 1, "active query")
    await run.until(beating(run), "heartbeats")

    assert await run.cancel() < CANCEL_S
    assert reader_backends(pg, state="active") == 0  # stopped on the server, not abandoned
    wait_reader_gone(pg)  # and the session ends


# --- http_get: a connection ----------------------------------------------------------------


async def test_cancelling_http_get_closes_its_connection() -> None:
    """An API that takes the request and never answers: the cancelled call closes its
    connection (the server reads the end of it)."""
    requested, closed = asyncio.Event(), asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        requested.set()
        while await reader.read(65536):
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    apis = HttpApis.model_validate(
        {
            "apis": {
                "slow": {
                    "base_url": f"http://127.0.0.1:{port}",
                    "rate_per_s": 10,
                    "timeout_s": BUSY_S,
                }
            }
        }
    )
    async with server:
        settings = Settings()
        run = start([http_get_tool(apis)], "http_get", {"api": "slow", "path": "x"}, settings)
        await run.until(requested.is_set, "request")
        await run.until(beating(run), "heartbeats")

        assert await run.cancel() < CANCEL_S
        await asyncio.wait_for(closed.wait(), CANCEL_S)


# --- MCP: a server process -----------------------------------------------------------------

SLOW_MCP_SERVER = f"""
import os, sys

import anyio
from mcp.server import MCPServer

server = MCPServer("slow")


@server.tool()
async def wait() -> str:
    \"\"\"Write this server's pid to the file named by argv[1], then wait a minute.\"\"\"
    with open(sys.argv[1] + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    await anyio.sleep({BUSY_S})
    return "done"


server.run()
"""


async def test_cancelling_an_mcp_tool_stops_its_server(tmp_path: Path) -> None:
    script, pid_file = tmp_path / "slow_server.py", tmp_path / "server.pid"
    script.write_text(SLOW_MCP_SERVER)
    servers = tmp_path / "servers.json"
    command = {"command": sys.executable, "args": [str(script), str(pid_file)]}
    servers.write_text(json.dumps({"servers": {"slow": command}}))
    tools = await discover_tools(load_servers(servers))

    run = start(tools, "slow_wait", {}, Settings())
    await run.until(pid_file.exists, "MCP server process")
    await run.until(beating(run), "heartbeats")
    pid = int(pid_file.read_text())
    assert running(pid)

    assert await run.cancel() < CANCEL_S
    assert not running(pid)  # the call's server process is gone
