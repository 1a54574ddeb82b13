"""MCP both ways, with the official `mcp` SDK on the other side.

- Keel as a server: `python -m keel.cli mcp` (= `keel mcp`) over stdio and over streamable
  HTTP, driven by the SDK's own client;
- Keel as a client: the tools of tests/mcp_fixture_server.py (and of Keel's own HTTP server)
  as Keel tools, called by an AgentTask on the real Temporal dev server, with a secret passed
  to the server that must never reach workflow history.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ToolAnnotations
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel
from temporalio.testing import WorkflowEnvironment

from activities.tools.activity import ToolActivities
from activities.tools.calculator import CalculatorInput, CalculatorOutput
from activities.tools.mcp_remote import (
    destructive,
    discover_tools,
    keel_tool_name,
    load_servers,
    redactor,
)
from activities.tools.registry import ToolContext, ToolRegistry, define_tool
from keel import cli
from keel._local_server import stop_process
from keel._mcp_server import KeelMcpServer
from keel._ports import free_port
from keel._queues import TOOLS, Queues
from keel.client import start_task
from keel.contracts import SideEffects, StepStatus, TaskRequest, TaskStatus, ToolCall
from keel.durable import TOOL_ERROR
from keel.errors import ToolRefusal
from keel.settings import Settings, SettingsError
from keel.testing import scripted_plan
from tests.conftest import REPO, scripted_components, unique
from workers.process import build_all, workers_running

FIXTURE = REPO / "tests" / "mcp_fixture_server.py"
READY_TIMEOUT_S = 30.0


def _text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


# --- Keel as an MCP server -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28 per request; 2025 handshake
async def test_stdio_server_serves_the_registry_through_the_validated_path(
    tmp_path: Path, mode: str
) -> None:
    home = tmp_path / "home"
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "keel.cli", "mcp"],
        env={"KEEL_HOME": str(home), "KEEL_LOG_LEVEL": "WARNING"},
        cwd=REPO,
    )
    async with Client(server, mode=mode) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}

        # every tool of the registry but the model-backed one, with its schemas and metadata
        assert {"calculator", "read_file", "list_files", "search_docs"} <= set(listed)
        assert "ask_reasoner" not in listed  # no model router on this server
        calculator = listed["calculator"]
        assert calculator.input_schema == CalculatorInput.model_json_schema()
        assert calculator.output_schema == CalculatorOutput.model_json_schema()
        assert calculator.annotations is not None
        assert calculator.annotations.read_only_hint is True
        assert calculator.annotations.idempotent_hint is True
        assert calculator.annotations.open_world_hint is False
        assert calculator.meta is not None and calculator.meta["keel/timeout_s"] == 5
        assert "free" in (calculator.description or "")
        read_file = listed["read_file"]
        assert read_file.meta is not None and read_file.meta["keel/side_effects"] == "read"

        done = await client.call_tool("calculator", {"expression": "17*23"})
        assert not done.is_error
        assert done.structured_content == {"value": 391.0, "text": "391"}
        assert json.loads(_text(done)) == done.structured_content

        bad = await client.call_tool("calculator", {"expr": "17*23"})
        assert bad.is_error
        assert _text(bad) == "invalid calculator arguments: expression: Field required"

        escape = await client.call_tool("read_file", {"path": "../../etc/passwd"})
        assert escape.is_error
        assert _text(escape) == "read_file: path '../../etc/passwd' leads outside the task's files"

        handbook = await client.call_tool("read_file", {"path": "handbook.md"})
        assert not handbook.is_error
        assert "Tuesdays and Thursdays" in handbook.structured_content["text"]
        sessions = [p.name for p in (home / "workspaces").iterdir()]
        assert len(sessions) == 1 and sessions[0].startswith("mcp-")  # the session's copy

        reasoner = await client.call_tool("ask_reasoner", {"question": "why?"})
        assert reasoner.is_error and "keel mcp --models" in _text(reasoner)

        if "run_python" in listed:
            ran = await client.call_tool("run_python", {"code": "print(6 * 7)"})
            assert not ran.is_error, _text(ran)
            assert ran.structured_content["stdout"] == "42\n"
            assert ran.structured_content["exit_code"] == 0

    assert list((home / "workspaces").iterdir()) == []  # removed with the session


class HttpServer:
    """`python -m keel.cli mcp --http 127.0.0.1:<free port> --token-env ...`."""

    def __init__(self, home: Path, token: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = log
        env = {**os.environ, "KEEL_HOME": str(home), "KEEL_TEST_MCP_TOKEN": token}
        command = [sys.executable, "-m", "keel.cli", "mcp", "--http", f"127.0.0.1:{self.port}"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command, "--token-env", "KEEL_TEST_MCP_TOKEN"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def status_without_token(self, **headers: str) -> int:
        request = urllib.request.Request(
            self.url,
            data=b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}',
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                **headers,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keel mcp exited: {self.log.read_text(errors='replace')}")
            try:
                self.status_without_token()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)  # poll interval while it starts
        raise TimeoutError(f"keel mcp not listening in {READY_TIMEOUT_S}s: {self.log.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc, 10)


async def test_streamable_http_server_requires_its_token_and_serves_keel_and_mcp_clients(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.token_urlsafe(24)
    server = HttpServer(tmp_path / "home", token, tmp_path / "mcp-http.log")
    workspaces = tmp_path / "home" / "workspaces"
    try:
        server.wait_ready()
        assert server.status_without_token() == 401
        # DNS rebinding: a page at another name that resolves here is refused, token or not
        bearer = f"Bearer {token}"
        assert server.status_without_token(Authorization=bearer, Host="evil.example") == 421
        assert (
            server.status_without_token(Authorization=bearer, Origin="http://evil.example") == 403
        )
        own = f"http://127.0.0.1:{server.port}"
        assert server.status_without_token(Authorization=bearer, Origin=own) not in (403, 421)

        # the official streamable-HTTP client, with the token
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(server.url, http_client=http)) as client,
        ):
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"calculator", "read_file"} <= names
            done = await client.call_tool("calculator", {"expression": "2**10"})
            assert not done.is_error and done.structured_content["value"] == 1024
            refused = await client.call_tool("read_file", {"path": "/etc/passwd"})
            assert refused.is_error and "must be relative" in _text(refused)
            # no MCP session on this protocol (2026-07-28): each request had its own copy of
            # the files, removed when it returned
            assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
            handbook = await client.call_tool("read_file", {"path": "handbook.md"})
            assert "Deployments" in handbook.structured_content["text"]
            assert list(workspaces.iterdir()) == []
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(server.url, http_client=http), mode="legacy") as client,
        ):
            # a 2025 session (Mcp-Session-Id) keeps one copy for its calls
            for _ in range(2):
                handbook = await client.call_tool("read_file", {"path": "handbook.md"})
                assert not handbook.is_error
            assert [p.name[:4] for p in workspaces.iterdir()] == ["mcp-"]

        # Keel consuming Keel: an HTTP server with a header taken from the worker's env
        monkeypatch.setenv("KEEL_TEST_MCP_AUTH", f"Bearer {token}")
        servers = tmp_path / "servers.json"
        servers.write_text(
            json.dumps(
                {
                    "servers": {
                        "keel": {
                            "url": server.url,
                            "headers_env": {"Authorization": "KEEL_TEST_MCP_AUTH"},
                            "tools": {"run_python": {"enabled": False}},
                        }
                    }
                }
            )
        )
        tools = {t.spec.name: t for t in await discover_tools(load_servers(servers))}
        assert "keel_calculator" in tools and "keel_run_python" not in tools
        calculator = tools["keel_calculator"]
        assert calculator.spec.side_effects == SideEffects.READ  # read-only on the server
        assert calculator.spec.input_schema == CalculatorInput.model_json_schema()
        executor = ToolActivities(ToolRegistry(tools.values()), settings)
        call = ToolCall(workflow_id="w", step_id="s1", tool="keel_calculator", args={}, max_usd=0.0)
        out = await executor.execute(
            calculator, call.model_copy(update={"args": {"expression": "6*7"}})
        )
        assert out.output["value"] == 42
        with pytest.raises(ToolRefusal) as refused_input:  # checked here, before any request
            await executor.execute(calculator, call.model_copy(update={"args": {"expr": 1}}))
        assert refused_input.value.type == TOOL_ERROR
        assert "'expression' is a required property" in refused_input.value.message
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, log  # SIGTERM stops it like Ctrl-C, cleanly
    assert list(workspaces.iterdir()) == []  # the session's copy removed with the server
    assert token not in log


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--http", "127.0.0.1:8765"], "pass --token-env NAME"),
        (["--http", "0.0.0.0:8765", "--no-auth"], "--no-auth is for a loopback address"),
        (["--no-auth"], "a stdio server has no network side"),
    ],
)
def test_an_http_server_without_a_token_is_refused(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["mcp", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keel: error: ") and says in err and len(err.splitlines()) == 1


# --- external MCP servers as Keel tools ------------------------------------------------------


def _decoded_history(history_json: str) -> str:
    """The history as JSON plus every payload's decoded bytes (payload data is base64)."""
    parts = [history_json]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                parts.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history_json))
    return "\n".join(parts)


async def test_agent_task_calls_external_mcp_tools_and_history_keeps_no_secret(
    temporal_env: WorkflowEnvironment,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = secrets.token_hex(16)
    monkeypatch.setenv("KEEL_TEST_FIXTURE_SECRET", secret)  # the worker's environment
    servers = tmp_path / "servers.json"
    servers.write_text(
        json.dumps(
            {
                "servers": {
                    "fixture": {
                        "command": sys.executable,
                        "args": [
                            str(FIXTURE),
                            "--expect-sha256",
                            hashlib.sha256(secret.encode()).hexdigest(),
                        ],
                        "env_from": {"FIXTURE_TOKEN": "KEEL_TEST_FIXTURE_SECRET"},
                        "tools": {
                            "echo": {"cost_per_call_usd": 0.001, "timeout_s": 20},
                            "leak": {"requires_approval": False},  # destructive by default
                        },
                    }
                }
            }
        )
    )
    # own home: Qdrant's local mode allows one client per folder (the session stack has one)
    mine = settings.model_copy(update={"home": tmp_path / "home", "mcp_servers": servers})
    queues = Queues(prefix=f"mcp-{uuid.uuid4().hex[:8]}-")
    components, model = scripted_components(mine, queues)
    try:
        added = await components.load_mcp_tools()
        assert sorted(added) == ["fixture_echo", "fixture_leak", "fixture_secret_check"]
        specs = {s.name: s for s in components.registry.specs()}
        echo = specs["fixture_echo"]
        assert echo.input_schema["properties"]["text"]["type"] == "string"
        assert echo.input_schema["required"] == ["text"]
        assert (echo.side_effects, echo.idempotent) == (SideEffects.READ, True)  # annotations
        assert (echo.cost_per_call_usd, echo.timeout_s) == (0.001, 20)  # the file's overrides
        assert echo.queue == TOOLS
        leak = specs["fixture_leak"]  # no annotations: MCP's defaults, the cautious reading
        assert (leak.side_effects, leak.idempotent) == (SideEffects.EXTERNAL, False)
        assert not leak.requires_approval and not echo.requires_approval  # the file said so

        # input is checked against the server's schema before any call
        executor = ToolActivities(components.registry, mine)
        tool = next(t for t in components.registry.on_queue(TOOLS) if t.spec.name == echo.name)
        with pytest.raises(ToolRefusal) as refused:
            await executor.execute(
                tool,
                ToolCall(workflow_id="w", step_id="s", tool=echo.name, args={"text": 5}, max_usd=1),
            )
        assert refused.value.message == (
            "invalid fixture_echo arguments: text: 5 is not of type 'string'"
        )

        task = unique("Echo a greeting and check the fixture server's token")
        model.script(
            task,
            "plan",
            scripted_plan(
                {"id": "s1", "tool": "fixture_echo", "args": {"text": "hello from keel"}},
                {"id": "s2", "tool": "fixture_secret_check", "args": {}},
                {"id": "s3", "tool": "fixture_leak", "args": {}},
            ),
        )
        async with workers_running(build_all(temporal_env.client, components)):
            handle = await start_task(temporal_env.client, TaskRequest(task=task), queues=queues)
            result = await handle.result()
            history = _decoded_history((await handle.fetch_history()).to_json())
    finally:
        components.close_memory()

    assert result.status == TaskStatus.COMPLETED, result.error
    steps = {s.step_id: s for s in result.steps}
    assert all(s.status == StepStatus.SUCCEEDED for s in result.steps)
    assert steps["s1"].output == {"text": "hello from keel"}
    assert steps["s2"].output == {"present": True, "matches": True, "text": "the expected token"}
    assert steps["s3"].output == {"text": "my token is [redacted]"}  # echoed back, redacted
    tools_booked = {e.name: e for e in result.ledger.entries if e.kind == "tool"}
    assert tools_booked["fixture_echo"].usd == pytest.approx(0.001)
    assert tools_booked["fixture_secret_check"].usd == 0
    assert steps["s1"].cost_usd == pytest.approx(0.001)

    assert "hello from keel" in history and "the expected token" in history  # payloads read
    assert secret not in history


# --- the servers file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not JSON (line 1, column 2"),
        ('{"servers": {"x": {}}}', "servers.x: give either command"),
        ('{"servers": {"x": {"command": "a", "url": "http://h/mcp"}}}', "give either command"),
        ('{"servers": {"Bad-Name": {"command": "a"}}}', "server name 'Bad-Name' must match"),
        ('{"servers": {"x": {"url": "http://h/mcp", "env_from": {"A": "B"}}}}', "headers_env"),
        ('{"servers": {"x": {"command": "a", "tools": {"t": {"cost": 1}}}}}', "tools.t.cost"),
        ('{"srv": {}}', "servers: Field required"),
    ],
)
def test_bad_servers_file_is_one_clear_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "servers.json"
    path.write_text(content)
    with pytest.raises(SettingsError) as err:
        load_servers(path)
    message = str(err.value)
    assert message.startswith(f"KEEL_MCP_SERVERS='{path}': ")
    assert expected in message and "\n" not in message


async def test_missing_secret_variable_is_a_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    path.write_text(
        json.dumps({"servers": {"fx": {"command": "x", "env_from": {"TOKEN": "KEEL_NOPE"}}}})
    )
    with pytest.raises(SettingsError, match="needs KEEL_NOPE \\(for TOKEN\\), which is not set"):
        await discover_tools(load_servers(path), environ={})


def test_tool_names_fit_the_spec_pattern() -> None:
    assert keel_tool_name("github", "createPullRequest") == "github_create_pull_request"
    assert keel_tool_name("fs", "read-file.v2") == "fs_read_file_v2"
    long = keel_tool_name("server", "x" * 80)
    assert len(long) == 48 and long != keel_tool_name("server", "x" * 81)


def test_a_destructive_mcp_tool_needs_approval_by_default() -> None:
    assert destructive(None)  # says nothing: MCP's defaults, destructive
    assert destructive(ToolAnnotations(open_world_hint=False))
    assert not destructive(ToolAnnotations(read_only_hint=True))
    assert not destructive(ToolAnnotations(destructive_hint=False))


def test_redaction_hides_secret_values_and_bearer_tokens_only() -> None:
    redact = redactor({"FIXTURE_TOKEN": "s3cr3t-value", "Authorization": "Bearer tok-123456"})
    assert redact({"text": "got s3cr3t-value", "items": ["tok-123456", "Bearer of news"]}) == {
        "text": "got [redacted]",
        "items": ["[redacted]", "Bearer of news"],
    }


class NoteInput(BaseModel):
    text: str


class NoteOutput(BaseModel):
    text: str


async def _note(args: NoteInput, ctx: ToolContext) -> NoteOutput:
    return NoteOutput(text=f"noted: {args.text}")


async def test_approval_and_paid_tools_are_refused_over_mcp(settings: Settings) -> None:
    registry = ToolRegistry(
        [
            define_tool(
                "publish",
                "Publish a note.",
                _note,
                NoteInput,
                NoteOutput,
                side_effects=SideEffects.WRITE,
                idempotent=False,
                requires_approval=True,
            ),
            define_tool(
                "paid_note",
                "A note that costs.",
                _note,
                NoteInput,
                NoteOutput,
                cost_per_call_usd=0.01,
                side_effects=SideEffects.EXTERNAL,
                requires_approval=False,  # refused for its price alone
            ),
        ]
    )
    free = KeelMcpServer(registry, settings)
    async with Client(free.server) as client:  # the official client, in process
        listed = {t.name: t for t in (await client.list_tools()).tools}
        publish = listed["publish"].annotations
        assert publish is not None
        assert (publish.read_only_hint, publish.destructive_hint) == (False, True)
        assert publish.idempotent_hint is False
        paid = listed["paid_note"].annotations
        assert paid is not None and paid.open_world_hint is True
        assert "$0.010000 per call" in (listed["paid_note"].description or "")

        refused = await client.call_tool("publish", {"text": "hi"})
        assert refused.is_error and "needs a person's approval" in _text(refused)
        too_dear = await client.call_tool("paid_note", {"text": "hi"})
        assert too_dear.is_error
        assert _text(too_dear).startswith("paid_note costs $0.010000 per call")
        assert "--max-usd-per-call" in _text(too_dear)

    allowed = KeelMcpServer(registry, settings, max_usd_per_call=0.02)
    async with Client(allowed.server) as client:
        done = await client.call_tool("paid_note", {"text": "hi"})
        assert not done.is_error
        assert done.structured_content == {"text": "noted: hi"}
        assert done.meta is not None and done.meta["keel/cost_usd"] == 0.01
