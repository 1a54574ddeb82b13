"""Tools of external MCP servers as Keel tools (the servers listed in KEEL_MCP_SERVERS).

The file names each server and how to reach it, and may correct the metadata of its tools:

    {"servers": {
        "github": {"command": "github-mcp", "args": ["stdio"],
                   "env_from": {"GITHUB_TOKEN": "KEEL_GITHUB_TOKEN"}},
        "search": {"url": "https://search.example.com/mcp",
                   "headers_env": {"Authorization": "KEEL_SEARCH_AUTH"},
                   "tools": {"web_search": {"cost_per_call_usd": 0.01, "timeout_s": 30}}}}}

`discover_tools` asks every server for its tools once (at worker start) and makes each a Keel
`Tool` named `<server>_<tool>`: its input is checked against the server's JSON schema before
any call, its metadata comes from the server's annotations (read-only, idempotent, open
world) corrected by the file, and every call is an ordinary tool activity with the same
budget check, output validation and size cap as the built-in tools.

Secrets: `env_from` and `headers_env` name variables of the worker's environment; their values
are read in the worker at connection time and go only to the server process's environment
or the HTTP headers. They are never part of a tool's arguments, spec or output, so they never
reach workflow history; a value a server echoes back is redacted from outputs and errors.

Each call opens its own session (for a stdio server, its own process): no state crosses from
one task or user to another, a crashed or hung server costs one call, which the activity's
retry repeats on a fresh one, and no connection outlives the activity that opened it. A
cancelled call shuts its session down as the SDK does even when cancelled: a stdio server's
stdin is closed, and its process tree is terminated if it has not exited 2 s later.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio
import httpx2
import mcp_types
from jsonschema import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from activities.tools.registry import Tool, ToolContext
from keel._core.redaction import Redactor
from keel._queues import TOOLS
from keel.contracts import SideEffects, ToolSpec
from keel.errors import ServiceStartError, ToolRefusal, one_line
from keel.settings import SettingsError, load_json_config

SERVER_NAME = r"^[a-z][a-z0-9_]{0,23}$"
MAX_NAME = 48  # ToolSpec.name: ^[a-z][a-z0-9_]{0,47}$
MAX_DESCRIPTION = 1000
DISCOVERY_TIMEOUT_S = 30.0
HTTP_CONNECT_S = 30.0
HTTP_READ_S = 300.0
CLIENT_INFO = mcp_types.Implementation(name="keel", version="0.1.0")


class McpServerError(ServiceStartError):
    """An external MCP server would not start, answer or list its tools at discovery."""


# --- the servers file ----------------------------------------------------------------------


class ToolOverride(BaseModel):
    """Corrections to what a server says about one of its tools; unset fields keep it."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="false: do not offer this tool at all")
    cost_per_call_usd: float | None = Field(default=None, ge=0)
    avg_latency_ms: float | None = Field(default=None, ge=0)
    timeout_s: float | None = Field(default=None, gt=0)
    requires_approval: bool | None = None
    side_effects: SideEffects | None = None
    idempotent: bool | None = None
    max_attempts: int | None = Field(default=None, ge=1)


class ServerConfig(BaseModel):
    """One external MCP server: a command to run (stdio) or a streamable-HTTP URL."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list)
    cwd: Path | None = None
    env_from: dict[str, str] = Field(
        default_factory=dict,
        description="variable in the server's environment -> variable of the worker's",
    )
    url: str | None = Field(default=None, pattern=r"^https?://")
    headers_env: dict[str, str] = Field(
        default_factory=dict, description="HTTP header -> variable of the worker's environment"
    )
    tools: dict[str, ToolOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (a stdio server) or url (streamable HTTP)")
        if self.url is not None and (self.args or self.env_from or self.cwd):
            raise ValueError("args, cwd and env_from are for command servers; use headers_env")
        if self.command is not None and self.headers_env:
            raise ValueError("headers_env is for url servers; use env_from")
        return self

    @property
    def where(self) -> str:
        return self.url or " ".join([self.command or "", *self.args]).strip()


class ServersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    servers: dict[str, ServerConfig]

    @model_validator(mode="after")
    def _names(self) -> ServersFile:
        for name in self.servers:
            if not re.match(SERVER_NAME, name):
                raise ValueError(
                    f"server name {name!r} must match {SERVER_NAME} (it prefixes tool names)"
                )
        return self


def load_servers(path: Path) -> ServersFile:
    """The servers file KEEL_MCP_SERVERS points to; SettingsError with one line if unusable."""
    fix = (
        'expected {"servers": {"<name>": {"command": ..., "args": [...]} or {"url": ...}}} '
        "(the README, section MCP)"
    )
    return load_json_config("KEEL_MCP_SERVERS", Path(path), ServersFile, fix)


# --- secrets and connections ---------------------------------------------------------------


class MissingSecret(ToolRefusal):
    """A variable the servers file names is not set in the worker's environment."""


def resolve_secrets(name: str, server: ServerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment additions (stdio) or HTTP headers (url), read from the
    worker's environment now."""
    mapping = server.env_from if server.command is not None else server.headers_env
    values = {}
    for target, variable in mapping.items():
        value = environ.get(variable)
        if value is None:
            raise MissingSecret(
                f"MCP server {name!r} needs {variable} (for {target}), "
                "which is not set in this worker's environment"
            )
        values[target] = value
    return values


def redactor(secrets: Mapping[str, str]) -> Callable[[Any], Any]:
    """Replaces every form of every secret value (keel/_core/redaction.py) in strings,
    lists and dicts by `[redacted]`."""
    return Redactor(secrets.values()).scrub


@asynccontextmanager
async def _connect(server: ServerConfig, secrets: dict[str, str]) -> AsyncIterator[Client]:
    if server.command is not None:
        params = StdioServerParameters(
            command=server.command, args=server.args, env=secrets, cwd=server.cwd
        )
        async with Client(params, client_info=CLIENT_INFO, cache=None) as client:
            yield client
    else:
        assert server.url is not None
        timeout = httpx2.Timeout(HTTP_CONNECT_S, read=HTTP_READ_S)
        async with (
            httpx2.AsyncClient(headers=secrets, timeout=timeout) as http,
            Client(
                streamable_http_client(server.url, http_client=http),
                client_info=CLIENT_INFO,
                cache=None,
            ) as client,
        ):
            yield client


# --- tools ---------------------------------------------------------------------------------


def keel_tool_name(server: str, tool: str) -> str:
    """`<server>_<tool>` in ToolSpec's name alphabet: camelCase split, other characters to
    `_`, cut to 48 characters with a hash of the full name when longer."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", tool).lower()
    name = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", f"{server}_{snake}")).rstrip("_")
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()[:6]
        name = f"{name[: MAX_NAME - 7].rstrip('_')}_{digest}"
    return name


class _SchemaChecked(RootModel[dict[str, Any]]):
    """A JSON object checked against a JSON schema (set per tool on a subclass); the errors
    are reported like pydantic's, at the path where they occur."""

    schema_validator: ClassVar[Validator]

    @model_validator(mode="after")
    def _check_schema(self) -> _SchemaChecked:
        errors = sorted(
            self.schema_validator.iter_errors(self.root),
            key=lambda e: [str(p) for p in e.absolute_path],
        )
        if errors:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("json_schema", "{reason}", {"reason": e.message}),
                        loc=tuple(e.absolute_path),
                        input=e.instance,
                    )
                    for e in errors[:5]
                ],
            )
        return self


def _checked_model(name: str, schema: dict[str, Any]) -> type[_SchemaChecked]:
    cls = validator_for(schema)
    cls.check_schema(schema)
    return type(name, (_SchemaChecked,), {"schema_validator": cls(schema)})


TEXT_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "description": "the tool's text content"}},
    "required": ["text"],
}


def _output_schema(remote: mcp_types.Tool) -> tuple[dict[str, Any], bool]:
    """The Keel output schema, and whether a structured result is wrapped in `result`
    (servers may declare any JSON value; Keel outputs are objects)."""
    schema = remote.output_schema
    if schema is None:
        return TEXT_OUTPUT_SCHEMA, False
    if schema.get("type") == "object":
        return schema, False
    return {"type": "object", "properties": {"result": schema}, "required": ["result"]}, True


def _side_effects(annotations: mcp_types.ToolAnnotations | None) -> tuple[SideEffects, bool]:
    """Side effects and idempotence from the annotations, read as the spec defines their
    defaults (not read-only, destructive, not idempotent, open world): a tool that says
    nothing is treated as an external call that must not be repeated."""
    a = annotations or mcp_types.ToolAnnotations()
    if a.read_only_hint:
        return SideEffects.READ, True
    effects = SideEffects.WRITE if a.open_world_hint is False else SideEffects.EXTERNAL
    return effects, bool(a.idempotent_hint)


def destructive(annotations: mcp_types.ToolAnnotations | None) -> bool:
    """Whether a call may destroy something, as MCP's annotations say (by the spec's default,
    a tool that is not read-only is destructive): such a tool waits for a person's approval
    unless the servers file says `"requires_approval": false` for it."""
    a = annotations or mcp_types.ToolAnnotations()
    return not a.read_only_hint and a.destructive_hint is not False


def _make_tool(
    server_name: str,
    server: ServerConfig,
    remote: mcp_types.Tool,
    override: ToolOverride,
    environ: Mapping[str, str],
) -> Tool:
    name = keel_tool_name(server_name, remote.name)
    model_name = "".join(part.title() for part in name.split("_"))
    try:
        input_model = _checked_model(f"{model_name}Input", remote.input_schema)
        output_schema, wrapped = _output_schema(remote)
        output_model = _checked_model(f"{model_name}Output", output_schema)
    except SchemaError as err:
        raise McpServerError(
            f"MCP server {server_name!r}: tool {remote.name!r} has an invalid JSON schema "
            f"({err.message}); leave it out with "
            f'"tools": {{"{remote.name}": {{"enabled": false}}}} in KEEL_MCP_SERVERS'
        ) from None
    effects, idempotent = _side_effects(remote.annotations)
    described = remote.description or remote.title or remote.name
    spec = ToolSpec(
        name=name,
        description=f"{described[:MAX_DESCRIPTION]} (tool {remote.name!r} of MCP server "
        f"{server_name!r})",
        input_schema=remote.input_schema,
        output_schema=output_schema,
        cost_per_call_usd=override.cost_per_call_usd or 0.0,
        avg_latency_ms=override.avg_latency_ms
        if override.avg_latency_ms is not None
        else (1000.0 if server.command else 300.0),  # a process start per call, or a request
        timeout_s=override.timeout_s or 30.0,
        side_effects=override.side_effects or effects,
        idempotent=override.idempotent if override.idempotent is not None else idempotent,
        requires_approval=override.requires_approval
        if override.requires_approval is not None
        else destructive(remote.annotations),
        queue=TOOLS,
        max_attempts=override.max_attempts or 3,
    )

    async def call(args: _SchemaChecked, ctx: ToolContext) -> BaseModel:
        secrets = resolve_secrets(server_name, server, environ)  # MissingSecret: a refusal
        redact = redactor(secrets)
        try:
            with anyio.fail_after(spec.timeout_s):
                async with _connect(server, secrets) as client:
                    result = await client.call_tool(remote.name, args.root)
        except TimeoutError:
            raise RuntimeError(
                f"MCP server {server_name!r} did not answer {remote.name} within "
                f"{spec.timeout_s:g} s"
            ) from None
        except Exception as err:  # connection or protocol: retried when the tool is idempotent
            raise RuntimeError(
                redact(f"MCP server {server_name!r} failed on {remote.name}: {one_line(err)}")
            ) from None
        text = "\n".join(b.text for b in result.content if isinstance(b, mcp_types.TextContent))
        if result.is_error:  # the tool refused: a refusal in Keel too (no retry, a re-plan)
            raise ToolRefusal(redact(text or "the server reported an error without a message"))
        if remote.output_schema is None:
            output: Any = {"text": text}
        elif wrapped:
            output = {"result": result.structured_content}
        else:
            output = result.structured_content
        # validated by the executor, which reports a mismatch as an invalid output
        return output_model.model_construct(redact(output))

    return Tool(spec, input_model, output_model, call)


async def _list_remote(
    name: str, server: ServerConfig, environ: Mapping[str, str]
) -> list[mcp_types.Tool]:
    try:
        secrets = resolve_secrets(name, server, environ)
    except MissingSecret as err:
        raise SettingsError(f"KEEL_MCP_SERVERS: {err}") from None
    tools: list[mcp_types.Tool] = []
    try:
        with anyio.fail_after(DISCOVERY_TIMEOUT_S):
            async with _connect(server, secrets) as client:
                cursor: str | None = None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        return tools
    except TimeoutError:
        problem = f"no tool list within {DISCOVERY_TIMEOUT_S:g} s"
    except Exception as err:
        problem = one_line(err)
    raise McpServerError(
        redactor(secrets)(f"MCP server {name!r} ({server.where}) did not list its tools: {problem}")
    )


async def discover_tools(
    servers: ServersFile, environ: Mapping[str, str] | None = None
) -> list[Tool]:
    """Keel tools for every tool of every server (one connection per server to list them).

    `environ` is where secret variables are read, at discovery and at each call (default:
    the worker's os.environ)."""
    env = os.environ if environ is None else environ
    tools: list[Tool] = []
    origin: dict[str, str] = {}
    for server_name, server in servers.servers.items():
        remote_tools = await _list_remote(server_name, server, env)
        offered = {t.name for t in remote_tools}
        unknown = sorted(set(server.tools) - offered)
        if unknown:
            raise SettingsError(
                f"KEEL_MCP_SERVERS: servers.{server_name}.tools names {', '.join(unknown)}, "
                f"which the server does not offer (it offers: {', '.join(sorted(offered))})"
            )
        for remote in remote_tools:
            override = server.tools.get(remote.name, ToolOverride())
            if not override.enabled:
                continue
            tool = _make_tool(server_name, server, remote, override, env)
            full = f"{server_name}/{remote.name}"
            if tool.spec.name in origin:
                raise McpServerError(
                    f"MCP tools {origin[tool.spec.name]} and {full} both become "
                    f"{tool.spec.name!r}; disable one in KEEL_MCP_SERVERS"
                )
            origin[tool.spec.name] = full
            tools.append(tool)
    return tools
