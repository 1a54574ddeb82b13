"""Keel's tools as an MCP server (the official `mcp` SDK), over stdio or streamable HTTP.

Every tool of the deployment's registry is offered with its JSON schemas, MCP annotations
derived from its metadata (read-only, destructive, idempotent, open world) and its cost,
latency, timeout and side effects in the description and under `_meta` (`keel/...` keys).
A call runs through `ToolActivities.execute`, the path the tool activities run: the same
input validation, cost check, output validation and output cap, and the tool's timeout. A
refusal comes back as a tool error result (`isError`) carrying the one-line message.

What an MCP call cannot have:
- a person to approve it: tools with `requires_approval` are refused;
- a task budget: each call may reserve `max_usd_per_call` (default 0, so paid tools are
  refused until the operator allows them with `keel mcp --max-usd-per-call`);
- a model router, unless asked for: tools on the model queue (ask_reasoner) are offered only
  with `keel mcp --models`, since building the router loads the local model (slow for a
  server a client spawns per conversation) or spends provider money.

Files: tools that use the task's workspace get a private one per MCP session, named like a
workflow id (`mcp-<hex>`): one per stdio server process (one client), one per streamable-HTTP
session, and for stateless HTTP requests (protocol 2026-07-28, no session) one per request,
removed when the call returns. The others are removed when the server stops.
"""

from __future__ import annotations

import hmac
import importlib.metadata
import json
import shutil
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import mcp_types as types
import structlog
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from activities.models.router import ModelRouter
from activities.tools.activity import ToolActivities
from activities.tools.registry import Tool, ToolRegistry
from keel._ports import host_headers
from keel._queues import LLM
from keel.contracts import SideEffects, ToolCall, ToolSpec
from keel.errors import BudgetExceeded, ToolRefusal, one_line
from keel.settings import Settings

SESSION_HEADER = "mcp-session-id"
META_PREFIX = "keel/"
INSTRUCTIONS = (
    "Keel's sandboxed tools. Files are a private copy of Keel's documents for this session; "
    "paths outside it are refused. Each tool's description ends with its cost, typical "
    "latency, timeout and side effects; refusals come back as tool errors with the reason."
)

log = structlog.get_logger("keel.mcp")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


def _version() -> str:
    try:
        return importlib.metadata.version("keel")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def new_session_id() -> str:
    return f"mcp-{uuid.uuid4().hex[:12]}"


# --- tools as MCP sees them ----------------------------------------------------------------


def tool_annotations(spec: ToolSpec) -> types.ToolAnnotations:
    # destructiveHint means something only for tools that change things: a write may
    # destroy; for an external call it is left unset, which MCP reads as "may" too.
    return types.ToolAnnotations(
        read_only_hint=spec.side_effects in (SideEffects.NONE, SideEffects.READ),
        destructive_hint=True if spec.side_effects == SideEffects.WRITE else None,
        idempotent_hint=spec.idempotent,
        open_world_hint=spec.side_effects == SideEffects.EXTERNAL,
    )


def describe(spec: ToolSpec) -> str:
    cost = "free" if spec.cost_per_call_usd == 0 else f"${spec.cost_per_call_usd:.6f} per call"
    facts = [
        cost,
        f"about {spec.avg_latency_ms:g} ms",
        f"times out after {spec.timeout_s:g} s",
        f"side effects: {spec.side_effects.value}",
    ]
    if spec.requires_approval:
        facts.append("needs a person's approval, so MCP calls are refused")
    return f"{spec.description} [Keel: {'; '.join(facts)}]"


def mcp_tool(spec: ToolSpec) -> types.Tool:
    return types.Tool(
        name=spec.name,
        description=describe(spec),
        input_schema=spec.input_schema,
        output_schema=spec.output_schema,
        annotations=tool_annotations(spec),
        _meta={
            f"{META_PREFIX}cost_per_call_usd": spec.cost_per_call_usd,
            f"{META_PREFIX}avg_latency_ms": spec.avg_latency_ms,
            f"{META_PREFIX}timeout_s": spec.timeout_s,
            f"{META_PREFIX}side_effects": spec.side_effects.value,
            f"{META_PREFIX}idempotent": spec.idempotent,
            f"{META_PREFIX}requires_approval": spec.requires_approval,
        },
    )


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _registry_tools(registry: ToolRegistry) -> dict[str, Tool]:
    """Every tool of the registry, in its order."""
    by_name: dict[str, Tool] = {}
    for queue in dict.fromkeys(spec.queue for spec in registry.specs()):
        for tool in registry.on_queue(queue):
            by_name[tool.spec.name] = tool
    return {spec.name: by_name[spec.name] for spec in registry.specs()}


# --- the server ----------------------------------------------------------------------------


class KeelMcpServer:
    def __init__(
        self,
        registry: ToolRegistry,
        settings: Settings,
        *,
        router: ModelRouter | None = None,
        max_usd_per_call: float = 0.0,
    ) -> None:
        self.settings = settings
        self.max_usd_per_call = max_usd_per_call
        self._executor = ToolActivities(registry, settings, router)
        every = _registry_tools(registry)
        self.without_models = {
            n for n, t in every.items() if t.spec.queue == LLM and router is None
        }
        self.tools = {n: t for n, t in every.items() if n not in self.without_models}
        self._process_session = new_session_id()  # stdio: one client per server process
        self._http_sessions: dict[str, str] = {}
        self.server: Server[Any] = Server(
            "keel",
            version=_version(),
            instructions=INSTRUCTIONS,
            on_list_tools=self._on_list_tools,
            on_call_tool=self._on_call_tool,
        )

    # handlers

    async def _on_list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[mcp_tool(t.spec) for t in self.tools.values()])

    async def _on_call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        session, ephemeral = self._session_of(ctx)
        try:
            return await self.call(params.name, params.arguments or {}, session)
        finally:
            if ephemeral:
                self._remove_workspace(session)

    def _session_of(self, ctx: ServerRequestContext[Any]) -> tuple[str, bool]:
        """The workflow-id-like name of the caller's session, and whether it lasts only for
        this request."""
        request = ctx.request
        if request is None:  # stdio
            return self._process_session, False
        header = request.headers.get(SESSION_HEADER)
        if header:
            if header not in self._http_sessions:
                self._http_sessions[header] = new_session_id()
            return self._http_sessions[header], False
        return new_session_id(), True

    async def call(
        self, name: str, arguments: dict[str, Any], session: str
    ) -> types.CallToolResult:
        """One tool call as an MCP result; `session` names the workspace (like a workflow
        id). Unknown tools are a protocol error; everything else an `isError` result."""
        tool = self.tools.get(name)
        if tool is None:
            if name in self.without_models:
                return _error(
                    f"{name} calls models, and this server runs without them: "
                    "start it with `keel mcp --models`"
                )
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"unknown tool {name!r}; this server has {', '.join(self.tools)}",
            )
        spec = tool.spec
        if spec.requires_approval:
            return _error(
                f"{name} needs a person's approval before it runs, and an MCP call has no one "
                "to give it: run it inside a Keel task (`keel run`) instead"
            )
        call = ToolCall(
            workflow_id=session,
            step_id=f"mcp-{uuid.uuid4().hex[:8]}",
            tool=name,
            args=arguments,
            max_usd=self.max_usd_per_call,
        )
        bound = log.bind(tool=name, session=session, step_id=call.step_id)
        try:
            with anyio.fail_after(spec.timeout_s):
                out = await self._executor.execute(tool, call, bound)
        except BudgetExceeded as over:
            return _error(
                f"{over.message}: this server allows ${self.max_usd_per_call:g} per call "
                "(`keel mcp --max-usd-per-call USD`)"
            )
        except ToolRefusal as refused:
            return _error(refused.message)
        except TimeoutError:
            return _error(f"{name} timed out after {spec.timeout_s:g} s")
        except Exception as err:  # the tool failed (an activity would retry it)
            bound.warning("tool failed", error=repr(err))
            return _error(f"{name} failed: {one_line(err)}")
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(out.output, ensure_ascii=False))],
            structured_content=out.output,
            _meta={f"{META_PREFIX}cost_usd": out.cost_usd},
        )

    # workspaces

    def _remove_workspace(self, session: str) -> None:
        shutil.rmtree(self.settings.workspaces_dir / session, ignore_errors=True)

    def close(self) -> None:
        """Remove the workspaces of this server's sessions."""
        for session in [self._process_session, *self._http_sessions.values()]:
            self._remove_workspace(session)
        self._http_sessions.clear()

    # transports

    async def run_stdio(self) -> None:
        """Serve one client on stdin/stdout until it closes them."""
        try:
            async with stdio_server() as (read, write):
                await self.server.run(read, write, self.server.create_initialization_options())
        finally:
            self.close()

    def http_app(self, host: str, port: int, token: str | None = None) -> ASGIApp:
        """The streamable-HTTP app at /mcp. A request must name this server in its Host
        header, and a browser's request come from its own origin (DNS rebinding: a page
        whose name resolves to this address reaches it as any other name); with a token,
        every request must carry `Authorization: Bearer <token>`."""
        app: ASGIApp = self.server.streamable_http_app(
            host=host, transport_security=own_address_only(host, port)
        )
        return app if token is None else _require_bearer(app, token)

    async def run_http(self, host: str, port: int, token: str | None = None) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.http_app(host, port, token), host=host, port=port, log_level="warning"
        )
        try:
            await uvicorn.Server(config).serve()
        finally:
            self.close()


def own_address_only(host: str, port: int) -> TransportSecuritySettings:
    """Requests must name this server (keel/_ports.py `host_headers`), and a browser's
    come from its own origin."""
    hosts = host_headers(host, port)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts],
    )


def _require_bearer(app: ASGIApp, token: str) -> ASGIApp:
    expected = f"Bearer {token}".encode()

    async def guarded(
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                body = {"error": "missing or wrong bearer token"}
                await send({"type": "http.response.body", "body": json.dumps(body).encode()})
                return
        await app(scope, receive, send)

    return guarded


def build_server(
    settings: Settings, *, models: bool = False, max_usd_per_call: float = 0.0
) -> KeelMcpServer:
    """The server for this deployment's tool registry (the tool worker's, without the
    external MCP tools of KEEL_MCP_SERVERS: Keel does not re-export other servers)."""
    from workers.components import Components

    components = Components.from_settings(settings)
    return KeelMcpServer(
        components.registry,
        settings,
        router=components.router if models else None,
        max_usd_per_call=max_usd_per_call,
    )
