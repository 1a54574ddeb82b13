"""`http_get`: GET requests to allowlisted HTTP APIs, one rate-limited task queue per API.

The APIs come from the JSON file named by KEEL_HTTP_APIS:

    {"apis": {"weather": {"base_url": "https://api.example.com/v1", "rate_per_s": 2,
                          "max_bytes": 262144, "content_types": ["application/json"],
                          "schema": {...}, "headers_env": {"Authorization": "WEATHER_TOKEN"},
                          "timeout_s": 10, "description": "current weather by city"}}}

- Egress: a call names an API (an enum in the input schema, so the planner sees the
  allowlist) and a path relative to that API's base URL; the URL built from them must keep
  the base's scheme, host and port and stay under its path. Redirects are not followed.
- Rate: every call of API `<name>` goes to task queue `keel-http-<name>`, whose workers set
  `max_task_queue_activities_per_second` to the API's `rate_per_s`. The Temporal server
  enforces that rate for the queue as a whole, however many tool workers poll it.
- Secrets: header values are read from the worker's environment at call time; they are
  never tool arguments, never in outputs or errors, and a response that echoes one is
  refused, so they never reach the workflow history.
- Validation: 2xx only (429 and 5xx are retried by Temporal, other statuses are refusals),
  the body at most `max_bytes` (read as a stream, abandoned past the limit), its content
  type in `content_types`, JSON parsed and checked against the API's JSON Schema.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import jsonschema
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    create_model,
    field_validator,
)

from activities.tools.registry import Tool, ToolContext, define_tool
from keel._core.redaction import Redactor
from keel._queues import HTTP
from keel._retry_after import retry_after
from keel.contracts import SideEffects
from keel.errors import HttpUnavailable, ToolRefusal
from keel.settings import Settings, load_json_config

NAME = "http_get"
HTTP_QUEUE = HTTP  # each API has its own queue: `keel-http-<api>`
MAX_BODY_BYTES = 400_000  # the body travels twice in the output (parsed and as text)
MAX_RETRY_AFTER_S = 60.0
TIMEOUT_MARGIN_S = 5.0  # the activity's timeout leaves room around the request's own
SNIPPET_CHARS = 200
API_NAME = re.compile(r"^[a-z0-9_]{1,30}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
MEDIA_TYPE = re.compile(r"^([a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+|[a-z0-9!#$&^_.+-]+/\*|\*/\*)$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# What the planner sees (and plan validation checks) before any call, as `check_path`
# decides it: no scheme, no `//host`, no `.` or `..` segment (nor `..;x`, which some servers
# read as `..`), no backslash, query, fragment or control character, percent-encoded or not,
# and no encoded `%` (only a server that decodes twice would see what it hides).
_SLASH = r"(?:/|%2[fF])"
PATH_PATTERN = (
    r"^(?![A-Za-z][A-Za-z0-9+.-]*(?::|%3[aA]))"  # a scheme
    rf"(?!{_SLASH}{{2}})"  # a host
    rf"(?!(?:.*{_SLASH})?(?:\.|%2[eE]){{1,2}}(?:{_SLASH}|;|%3[bB]|$))"  # a dot segment
    r"(?!.*%25)"  # an encoded percent
    r"(?!.*%(?:5[cC]|[01][0-9a-fA-F]|7[fF]))"  # an encoded backslash or control character
    r"[^\\?#\x00-\x1f\x7f]*$"
)


# --- the APIs file ---------------------------------------------------------------------------


def _api_name(name: str) -> str:
    if not API_NAME.match(name):
        raise ValueError(
            f"API name {name!r}: use lowercase letters, digits and _ (1 to 30 characters)"
        )
    return name


class HttpApi(BaseModel):
    """One allowlisted API."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    base_url: str = Field(description="every call stays under this URL (http or https)")
    rate_per_s: float = Field(gt=0, le=10_000, description="calls per second, all workers")
    max_bytes: int = Field(default=262_144, ge=1, le=MAX_BODY_BYTES)
    content_types: list[str] = Field(default=["application/json"], min_length=1)
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", description="JSON Schema every JSON body must match"
    )
    headers_env: dict[str, str] = Field(
        default_factory=dict, description="header name -> environment variable with its value"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    description: str = Field(default="", max_length=500, description="for the planner")
    requires_approval: bool = Field(
        default=True,
        description="a person approves each call (a GET can carry the task's data out in its "
        "path and parameters); false for an API where that cannot matter",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        url = urllib.parse.urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL with a host")
        if url.username is not None or url.password is not None:
            raise ValueError("no credentials in the URL: put them in headers_env")
        if url.query or url.fragment:
            raise ValueError("no query or fragment in the base URL: calls pass params")
        try:
            url.port  # noqa: B018 (raises on a bad port)
        except ValueError as err:
            raise ValueError(f"bad port in {value!r}: {err}") from None
        return value.rstrip("/")

    @field_validator("content_types")
    @classmethod
    def _content_types(cls, value: list[str]) -> list[str]:
        types = [t.strip().lower() for t in value]
        for media in types:
            if not MEDIA_TYPE.match(media):
                raise ValueError(f"{media!r} is not a media type like application/json or text/*")
        return types

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(value)
            except jsonschema.SchemaError as err:
                raise ValueError(f"not a valid JSON Schema: {err.message}") from None
        return value

    @field_validator("headers_env")
    @classmethod
    def _headers_env(cls, value: dict[str, str]) -> dict[str, str]:
        for header, var in value.items():
            if not HEADER_NAME.match(header) or header.lower() in ("host", "content-length"):
                raise ValueError(f"{header!r} cannot be a header set from the environment")
            if not ENV_NAME.match(var):
                raise ValueError(f"{var!r} (header {header}) is not an environment variable name")
        return value

    @property
    def origin(self) -> tuple[str, str, int | None]:
        url = httpx.URL(self.base_url)
        return url.scheme, url.host, url.port

    @property
    def base_path(self) -> str:
        return httpx.URL(self.base_url).path.rstrip("/")


class HttpApis(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apis: dict[Annotated[str, AfterValidator(_api_name)], HttpApi] = Field(min_length=1)


def load_http_apis(path: Path) -> HttpApis:
    """The APIs file, or a SettingsError of one line: the file, what is wrong, what to do."""
    fix = "fix the file (the format is in the README, section http_get)"
    return load_json_config("KEEL_HTTP_APIS", path, HttpApis, fix)


# --- the tool's input and output -------------------------------------------------------------


def check_path(path: str) -> str:
    """The path unchanged, or a ValueError saying why it could leave its API."""
    decoded = urllib.parse.unquote(path)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path + decoded):
        raise ValueError("the path contains control characters")
    if "\\" in decoded:
        raise ValueError("the path contains a backslash")
    if _SCHEME.match(path) or _SCHEME.match(decoded):
        raise ValueError(f"{path!r} is an absolute URL: give a path relative to the API")
    if path.startswith("//") or decoded.startswith("//"):
        raise ValueError(f"{path!r} names a host: give a path relative to the API")
    if "?" in path or "#" in path:
        raise ValueError("no query or fragment in the path: put query parameters in params")
    if "%25" in path:
        raise ValueError(f"{path!r} has an encoded '%': give the path decoded once")
    if any(segment.split(";")[0] in (".", "..") for segment in decoded.split("/")):
        raise ValueError(f"{path!r} has a '.' or '..' segment: give a path under the API")
    return path


class HttpGetArgs(BaseModel):
    """The arguments of one call; `api` is narrowed to the configured names (see
    `input_model`)."""

    model_config = ConfigDict(extra="forbid")

    api: str
    path: str = Field(
        default="",
        max_length=2000,
        description="path relative to the API's base URL, e.g. items/42 (no host, no '..')",
        json_schema_extra={"pattern": PATH_PATTERN},
    )
    params: dict[str, str] = Field(
        default_factory=dict, max_length=50, description="query parameters"
    )
    _path = field_validator("path")(check_path)


def input_model(names: list[str]) -> type[HttpGetArgs]:
    """The arguments with `api` as an enum of the allowlisted names. The enum is written out
    even for one name (pydantic would write `const`): the workflow routes a call by it and
    refuses names outside it (ToolSpec.activity_queue)."""
    allowed: Any = Literal.__getitem__(tuple(names))  # type: ignore[attr-defined]
    enum: list[JsonValue] = list(names)
    model: type[HttpGetArgs] = create_model(
        "HttpGetInput",
        __base__=HttpGetArgs,
        api=(
            allowed,
            Field(description="which allowlisted API", json_schema_extra={"enum": enum}),
        ),
    )
    return model


class HttpGetOutput(BaseModel):
    model_config = ConfigDict(
        serialize_by_alias=True, validate_by_name=True, validate_by_alias=True
    )

    api: str
    path: str
    status: int
    content_type: str = Field(description="the media type, without parameters")
    json_: Any = Field(default=None, alias="json", description="the parsed body, if JSON")
    text: str = Field(description="the body as text")
    bytes: int = Field(description="the body's size")
    summary: str


# --- the call --------------------------------------------------------------------------------


def build_url(api: HttpApi, path: str, params: Mapping[str, str]) -> httpx.URL:
    """The URL of a call, checked to keep the base's origin and stay under its path."""
    try:
        check_path(path)  # a validator too, so a ValueError, as pydantic wants
    except ValueError as err:
        raise ToolRefusal(str(err)) from None
    relative = path.removeprefix("/")
    url = httpx.URL(api.base_url + ("/" + relative if relative else ""), params=dict(params))
    base_path = api.base_path
    inside = url.path == base_path or url.path.startswith(base_path + "/") or base_path == ""
    if (url.scheme, url.host, url.port) != api.origin or not inside:
        raise ToolRefusal(f"{path!r} leads outside {api.base_url}")
    return url


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _accepted(media: str, allowed: list[str]) -> bool:
    kind = media.split("/", 1)[0]
    return any(a == media or a == "*/*" or a == f"{kind}/*" for a in allowed)


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _reject_constant(name: str) -> Any:
    raise ToolRefusal(f"the body is not standard JSON ({name})")


class HttpGet:
    """The tool function: one GET against an allowlisted API."""

    def __init__(
        self,
        apis: HttpApis,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.apis = apis.apis
        self._environ = environ
        self._transport = transport
        self._validators = {
            name: jsonschema.Draft202012Validator(api.schema_)
            for name, api in self.apis.items()
            if api.schema_ is not None
        }

    async def __call__(self, args: HttpGetArgs, ctx: ToolContext) -> HttpGetOutput:
        return await self.get(args)

    def _secrets(self, name: str, api: HttpApi) -> dict[str, str]:
        environ = os.environ if self._environ is None else self._environ
        headers = {}
        for header, var in api.headers_env.items():
            value = environ.get(var, "")
            if not value:
                raise ToolRefusal(
                    f"API {name} needs header {header} from environment variable {var}, which "
                    "is not set where the tools worker runs: set it there and restart the worker"
                )
            if not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise ToolRefusal(
                    f"API {name}: environment variable {var} (header {header}) holds "
                    "characters a header value cannot have"
                )
            headers[header] = value
        return headers

    async def get(self, args: HttpGetArgs) -> HttpGetOutput:
        name = args.api
        api = self.apis.get(name)
        if api is None:
            raise ToolRefusal(f"API {name!r} is not allowlisted (allowed: {', '.join(self.apis)})")
        url = build_url(api, args.path, args.params)
        call = _Call(f"GET {name}:/{args.path.removeprefix('/')}", self._secrets(name, api))
        headers = {
            "Accept": ", ".join(api.content_types),
            "User-Agent": "keel-http-get/1",
            **call.secrets,
        }
        try:
            async with (
                asyncio.timeout(api.timeout_s),
                httpx.AsyncClient(
                    follow_redirects=False,
                    timeout=api.timeout_s,
                    transport=self._transport,
                    trust_env=False,  # no proxy or .netrc from the environment: exact egress
                ) as client,
                client.stream("GET", url, headers=headers) as response,
            ):
                if not 200 <= response.status_code < 300:
                    await call.refuse_status(response)
                media = call.content_type(response, api.content_types)
                body = await call.read(response, api.max_bytes)
        except TimeoutError:
            raise HttpUnavailable(
                f"{call.where}: no answer within {api.timeout_s:g} s"
            ).to_application_error() from None
        except httpx.TransportError as err:  # connection refused, reset, ...: worth retrying
            raise HttpUnavailable(
                call.scrub(f"{call.where}: {type(err).__name__}: {err}")
            ).to_application_error() from None
        return self._output(call, args, response, media, body)

    def _output(
        self, call: _Call, args: HttpGetArgs, response: httpx.Response, media: str, body: bytes
    ) -> HttpGetOutput:
        try:
            text = body.decode(response.charset_encoding or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            text = body.decode("utf-8", errors="replace")
        parsed: Any = None
        if _is_json(media):
            try:
                parsed = json.loads(body, parse_constant=_reject_constant)
            except json.JSONDecodeError as err:
                raise ToolRefusal(
                    f"{call.where}: the body is not valid JSON (line {err.lineno}, column "
                    f"{err.colno}: {err.msg})"
                ) from None
            except UnicodeDecodeError as err:  # json.loads detects UTF-8, -16 or -32
                raise ToolRefusal(
                    f"{call.where}: the body is not valid JSON ({err.encoding}: {err.reason} at "
                    f"byte {err.start})"
                ) from None
            except ToolRefusal as refusal:  # NaN, Infinity
                raise refusal.reworded(f"{call.where}: {refusal.message}") from None
            validator = self._validators.get(args.api)
            if validator is not None:
                error = jsonschema.exceptions.best_match(validator.iter_errors(parsed))
                if error is not None:
                    at = "/" + "/".join(str(p) for p in error.absolute_path)
                    raise ToolRefusal(
                        f"{call.where}: the body does not match the API's schema at {at}: "
                        + call.scrub(_short(error.message))
                    )
        status = response.status_code
        return HttpGetOutput(
            api=args.api,
            path=args.path,
            status=status,
            content_type=media,
            json=parsed,
            text=text,
            bytes=len(body),
            summary=f"{call.where}: {status} {media or '(no content)'}, {len(body)} bytes",
        )


# how a response body is read when looking for an echoed secret: whatever it declares, a
# secret in any of these is found (latin-1 reads any one-byte charset's ASCII the same way)
ECHO_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "latin-1")


def _short(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclasses.dataclass(frozen=True)
class _Call:
    """One request's checks; every message it writes is free of the secret header values."""

    where: str  # "GET <api>:/<path>", how messages name the call
    secrets: Mapping[str, str]  # header -> value, from the environment

    @functools.cached_property
    def redactors(self) -> dict[str, Redactor]:
        """Per secret header, its value's forms, each replaced by `<header>`."""
        return {h: Redactor([v], replacement=f"<{h}>") for h, v in self.secrets.items()}

    def scrub(self, text: str) -> str:
        for redactor in self.redactors.values():
            text = redactor.scrub(text)
        return text

    def refuse_echo(self, data: bytes) -> None:
        """Refuse a body that holds a secret header's value in any form (the token of
        `Bearer <token>` alone, JSON-escaped, percent-encoded) in any encoding it may be
        in (UTF-8, UTF-16, a one-byte charset)."""
        texts = {data.decode(encoding, errors="ignore") for encoding in ECHO_ENCODINGS}
        for header, redactor in self.redactors.items():
            if any(redactor.found_in(text) for text in texts):
                raise ToolRefusal(
                    f"{self.where}: the response contains the value of the secret header "
                    f"{header}; refused so that it never reaches the workflow history"
                )

    async def refuse_status(self, response: httpx.Response) -> None:
        """Raise for a status that is not 2xx: retryable for 429 and 5xx, a refusal
        otherwise. The start of the body goes into the message (what the API said)."""
        status = response.status_code
        snippet = b""
        async for chunk in response.aiter_bytes():
            snippet += chunk
            if len(snippet) >= 4096:
                break
        self.refuse_echo(snippet)
        said = _short(snippet.decode("utf-8", errors="replace"))
        answer = f"{status} {response.reason_phrase}".strip() + (f": {said}" if said else "")
        if status == 429 or status >= 500:
            raise HttpUnavailable(
                f"{self.where}: the API answered {answer} (retried)",
                next_retry_delay=retry_after(response.headers, cap_s=MAX_RETRY_AFTER_S),
            ).to_application_error()
        if 300 <= status < 400:
            location = self.scrub(_short(response.headers.get("location", "(no Location)")))
            raise ToolRefusal(
                f"{self.where}: the API redirects ({status}) to {location}; redirects are not "
                "followed: call the final path of an allowlisted API instead"
            )
        raise ToolRefusal(f"{self.where}: the API answered {answer}")

    def content_type(self, response: httpx.Response, allowed: list[str]) -> str:
        """The response's media type, checked before its body is read."""
        media = media_type(response.headers.get("content-type", ""))
        if response.status_code == 204 or (
            not media and response.headers.get("content-length") == "0"
        ):
            return media
        if not media:
            raise ToolRefusal(f"{self.where}: the response has no Content-Type")
        if not _accepted(media, allowed):
            raise ToolRefusal(
                f"{self.where}: content type {media} is not one of {', '.join(allowed)}"
            )
        return media

    async def read(self, response: httpx.Response, max_bytes: int) -> bytes:
        """The body, read as a stream and abandoned as soon as it is over `max_bytes`."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ToolRefusal(
                f"{self.where}: the body is {int(declared):,} bytes, over {max_bytes:,}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:  # stop: the rest is never downloaded
                raise ToolRefusal(f"{self.where}: the body is over {max_bytes:,} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        self.refuse_echo(body)
        return body


# --- the tool --------------------------------------------------------------------------------


def http_get_tool(apis: HttpApis, environ: Mapping[str, str] | None = None) -> Tool:
    names = list(apis.apis)
    listed = "; ".join(
        f"{n} ({a.base_url}{': ' + a.description if a.description else ''})"
        for n, a in apis.apis.items()
    )
    return define_tool(
        NAME,
        "HTTP GET on an allowlisted API; `api` is one of: "
        f"{listed}. `path` is relative to the API's base URL, `params` are query parameters. "
        "Returns status, content_type, json (the parsed body, if JSON) and text.",
        HttpGet(apis, environ),
        input_model(names),
        HttpGetOutput,
        avg_latency_ms=300,
        timeout_s=max(a.timeout_s for a in apis.apis.values()) + TIMEOUT_MARGIN_S,
        side_effects=SideEffects.EXTERNAL,
        idempotent=True,
        # one tool for every API: a call waits for approval when any API asks for it
        requires_approval=any(a.requires_approval for a in apis.apis.values()),
        queue=HTTP_QUEUE,
        queue_arg="api",
        max_attempts=3,
    )


def http_tools(settings: Settings) -> list[Tool]:
    """`http_get` when KEEL_HTTP_APIS names an APIs file, else nothing."""
    if settings.http_apis is None:
        return []
    return [http_get_tool(load_http_apis(settings.http_apis))]


def api_queues(tool: Tool) -> dict[str, float]:
    """The base task queue of each API this tool calls, with its rate (for the workers)."""
    if not isinstance(tool.fn, HttpGet):
        return {}
    return {f"{HTTP_QUEUE}-{name}": api.rate_per_s for name, api in tool.fn.apis.items()}
