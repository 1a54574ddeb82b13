"""http_get against a real local HTTP server: the allowlist, the per-API task queue whose rate
the Temporal server enforces, secrets kept out of outputs and history, and the validation
of status, size, content type and schema."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
from pydantic import ValidationError
from temporalio.api.enums.v1 import RateLimitSource, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    ListTaskQueuePartitionsRequest,
)
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, WorkerConfig

from activities.tools.builtin import default_registry
from activities.tools.http import (
    HttpGet,
    HttpGetArgs,
    build_url,
    http_get_tool,
    load_http_apis,
)
from activities.tools.registry import Tool
from keel._queues import Queues
from keel.client import start_task
from keel.contracts import SideEffects, StepStatus, TaskRequest, TaskResult, TaskStatus
from keel.durable import HTTP_UNAVAILABLE
from keel.errors import ToolRefusal
from keel.settings import Settings, SettingsError
from keel.testing import Stack, scripted_plan
from tests.conftest import scripted_components, unique
from workers.process import build_all, workers_running

TOKEN_VAR = "KEEL_TEST_HTTP_TOKEN"
RATE_PER_S = 2.0
SCHEMA = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
}
STREAM_TOTAL = 64 * 1024 * 1024  # what /v1/stream would send to a client that reads it all


# --- a real HTTP server ----------------------------------------------------------------------


@dataclass
class Seen:
    at: float  # time.monotonic() on arrival
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased


@dataclass
class ApiServer:
    """What the API saw: every request, with its arrival time and headers."""

    base: str = ""
    seen: list[Seen] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    streamed: list[int] = field(default_factory=list)  # bytes /v1/stream got out per request
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests(self, run: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.query.get("run") == run]


def _handler(state: ApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            with state.lock:
                state.seen.append(Seen(time.monotonic(), url.path, query, headers))
            path = url.path.removeprefix("/v1/")
            if path.startswith("items/"):
                item = path.removeprefix("items/")
                self._json(200, {"id": int(item), "name": f"item {item} {query.get('run', '')}"})
            elif path == "html":
                self._send(200, "text/html", b"<html><body>not json</body></html>")
            elif path == "text":
                self._send(200, "text/plain; charset=utf-8", b"plain words")
            elif path == "big":
                self._json(200, {"id": 1, "name": "x" * 5000})
            elif path == "stream":  # no Content-Length: only reading tells the size
                self._stream("application/json")
            elif path == "html-stream":
                self._stream("text/html")
            elif path == "wrong-schema":
                self._json(200, {"id": "seven", "name": "bad id"})
            elif path == "not-json":
                self._send(200, "application/json", b'{"id": 1, "name": ')
            elif path == "nan":
                self._send(200, "application/json", b'{"id": NaN, "name": "x"}')
            elif path == "redirect":
                self.send_response(302)
                self.send_header("Location", "http://evil.example/steal")
                self.end_headers()
            elif path == "redirect-with-token":  # as if handing the credential on
                self.send_response(307)
                self.send_header("Location", f"http://evil.example/?t={headers['authorization']}")
                self.end_headers()
            elif path == "flaky":
                key = query.get("key", "")
                with state.lock:
                    state.attempts[key] += 1
                    attempt = state.attempts[key]
                if attempt == 1:
                    self._send(500, "text/plain", b"temporary outage")
                else:
                    self._json(200, {"id": attempt, "name": f"recovered {key}"})
            elif path == "busy":
                self._send(429, "text/plain", b"slow down", {"Retry-After": "3"})
            elif path == "missing":
                self._json(404, {"message": "no such item"})
            elif path == "echo":
                self._json(200, {"id": 1, "name": json.dumps(headers)})
            else:
                self._json(404, {"message": f"no route {url.path}"})

        def _json(self, status: int, body: Any) -> None:
            self._send(status, "application/json; charset=utf-8", json.dumps(body).encode())

        def _send(
            self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            chunk, sent = b" " * 65536, 0
            try:
                while sent < STREAM_TOTAL:
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except OSError:  # the client hung up
                pass
            with state.lock:
                state.streamed.append(sent)

    return Handler


@pytest.fixture(scope="module")
def api_server() -> Iterator[ApiServer]:
    state = ApiServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the APIs file and the tool --------------------------------------------------------------


@dataclass
class Setup:
    server: ApiServer
    apis_file: Path
    secret: str  # the value of the secret header, from the environment only
    tool: Tool
    settings: Settings

    @property
    def http(self) -> HttpGet:
        assert isinstance(self.tool.fn, HttpGet)
        return self.tool.fn

    def args(self, **values: Any) -> HttpGetArgs:
        args = self.tool.input_model.model_validate(values)
        assert isinstance(args, HttpGetArgs)
        return args


def write_apis(path: Path, base: str) -> None:
    apis = {
        "apis": {
            "local": {
                "base_url": f"{base}/v1",
                "rate_per_s": RATE_PER_S,
                "max_bytes": 1024,
                "content_types": ["application/json"],
                "schema": SCHEMA,
                "timeout_s": 5,
                "description": "items by id",
                "requires_approval": False,  # these tests are about the calls themselves
            },
            "secret": {
                "base_url": f"{base}/v1/",
                "rate_per_s": 50,
                "content_types": ["application/json", "text/*"],
                "headers_env": {"Authorization": TOKEN_VAR},
                "timeout_s": 5,
                "requires_approval": False,
            },
        }
    }
    path.write_text(json.dumps(apis))


@pytest.fixture(scope="module")
def apis(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("http-home")
    apis_file = home / "apis.json"
    write_apis(apis_file, api_server.base)
    secret = f"Bearer s3cr3t-{uuid.uuid4().hex}"
    settings = Settings(
        home=home, planner_model="scripted", reasoner_model="scripted", http_apis=apis_file
    )
    tool = http_get_tool(load_http_apis(apis_file))
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_VAR, secret)  # the tool reads it from the worker's environment
        yield Setup(api_server, apis_file, secret, tool, settings)


# --- the tool function, directly -------------------------------------------------------------


async def test_good_json_is_parsed_and_the_secret_header_stays_out_of_the_output(
    apis: Setup,
) -> None:
    run = uuid.uuid4().hex
    out = await apis.http.get(apis.args(api="secret", path="/items/7", params={"run": run}))

    assert out.status == 200 and out.content_type == "application/json"
    assert out.json_ == {"id": 7, "name": f"item 7 {run}"}
    assert json.loads(out.text) == out.json_ and out.bytes == len(out.text.encode())
    assert out.summary == f"GET secret:/items/7: 200 application/json, {out.bytes} bytes"
    [seen] = apis.server.requests(run)
    assert seen.path == "/v1/items/7"
    assert seen.headers["authorization"] == apis.secret  # it reached the API ...
    dumped = out.model_dump_json()
    assert apis.secret not in dumped and "s3cr3t" not in dumped  # ... and no output


async def test_an_api_without_a_secret_sends_none(apis: Setup) -> None:
    run = uuid.uuid4().hex
    out = await apis.http.get(apis.args(api="local", path="items/3", params={"run": run}))
    assert out.json_ == {"id": 3, "name": f"item 3 {run}"}  # and it matched the schema
    [seen] = apis.server.requests(run)
    assert "authorization" not in seen.headers
    assert seen.headers["accept"] == "application/json"


async def test_text_is_returned_where_the_api_allows_it(apis: Setup) -> None:
    out = await apis.http.get(apis.args(api="secret", path="text"))
    assert (out.content_type, out.text, out.json_) == ("text/plain", "plain words", None)


@pytest.mark.parametrize(
    ("api", "path", "expected"),
    [
        ("local", "html", "GET local:/html: content type text/html is not one of application/json"),
        ("local", "big", "GET local:/big: the body is 5,0"),  # Content-Length says so
        ("local", "wrong-schema", "does not match the API's schema at /id: 'seven' is not of type"),
        ("local", "not-json", "GET local:/not-json: the body is not valid JSON (line 1, column"),
        ("local", "nan", "the body is not standard JSON (NaN)"),
        ("local", "missing", 'the API answered 404 Not Found: {"message": "no such item"}'),
        ("secret", "echo", "contains the value of the secret header Authorization; refused"),
    ],
)  # fmt: skip
async def test_responses_that_break_the_rules_are_refused(
    apis: Setup, api: str, path: str, expected: str
) -> None:
    with pytest.raises(ToolRefusal) as refused:
        await apis.http.get(apis.args(api=api, path=path))
    assert expected in str(refused.value)
    assert apis.secret not in str(refused.value)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("stream", "GET local:/stream: the body is over 1,024 bytes"),
        ("html-stream", "GET local:/html-stream: content type text/html is not one of"),
    ],
)
async def test_a_refused_body_is_not_downloaded(apis: Setup, path: str, expected: str) -> None:
    """A body without Content-Length is abandoned once over max_bytes, and a body of the
    wrong type is not read at all: the server's writes fail long before the end of its 64
    MiB, because the client stopped reading and hung up."""
    before = len(apis.server.streamed)
    with pytest.raises(ToolRefusal, match=re.escape(expected)):
        await apis.http.get(apis.args(api="local", path=path))
    await wait_until(lambda: len(apis.server.streamed) > before)
    assert apis.server.streamed[-1] < STREAM_TOTAL


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # polled: the server's thread finishes in its own time
        assert time.monotonic() < deadline, "the server never finished the request"
        await asyncio.sleep(0.01)


async def test_a_redirect_is_refused_and_not_followed(apis: Setup) -> None:
    count = len(apis.server.seen)
    with pytest.raises(ToolRefusal) as refused:
        await apis.http.get(apis.args(api="local", path="redirect"))
    assert "GET local:/redirect: the API redirects (302) to http://evil.example/steal" in str(
        refused.value
    )
    assert len(apis.server.seen) == count + 1  # the Location was never requested


async def test_a_redirect_carrying_the_secret_does_not_repeat_it(apis: Setup) -> None:
    with pytest.raises(ToolRefusal) as refused:
        await apis.http.get(apis.args(api="secret", path="redirect-with-token"))
    assert "redirects (307) to http://evil.example/?t=<Authorization>;" in str(refused.value)
    assert apis.secret.removeprefix("Bearer ") not in str(refused.value)


async def test_server_errors_and_429_are_retryable(apis: Setup) -> None:
    key = uuid.uuid4().hex
    with pytest.raises(ApplicationError) as failed:
        await apis.http.get(apis.args(api="local", path="flaky", params={"key": key}))
    assert failed.value.type == HTTP_UNAVAILABLE and not failed.value.non_retryable
    assert "500 Internal Server Error: temporary outage (retried)" in failed.value.message
    out = await apis.http.get(apis.args(api="local", path="flaky", params={"key": key}))
    assert out.json_ == {"id": 2, "name": f"recovered {key}"}

    with pytest.raises(ApplicationError) as busy:
        await apis.http.get(apis.args(api="secret", path="busy"))
    assert busy.value.type == HTTP_UNAVAILABLE and not busy.value.non_retryable
    assert busy.value.next_retry_delay == timedelta(seconds=3)  # the API's Retry-After


async def test_an_unreachable_api_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "dead.json"
    path.write_text(json.dumps({"apis": {"dead": api_entry(f"http://127.0.0.1:{port}")}}))
    http = HttpGet(load_http_apis(path))
    with pytest.raises(ApplicationError) as failed:
        await http.get(HttpGetArgs(api="dead"))
    assert failed.value.type == HTTP_UNAVAILABLE and not failed.value.non_retryable
    assert failed.value.message.startswith("GET dead:/: ConnectError")


@pytest.mark.parametrize(
    "path",
    [
        "http://evil.example/x",
        "HTTPS://evil.example",
        "javascript:alert(1)",
        "//evil.example/x",
        "../admin",
        "items/../../admin",
        "/..",
        "%2e%2e/admin",
        "items/%2E%2E/%2e%2e/admin",
        "..;/admin",
        "items/%2e%2e%3bx/admin",
        "%252e%252e/admin",
        "a\\..\\admin",
        "a%5cb",
        "items/1\r\nX-Injected: 1",
        "items/%0d%0a",
        "items?id=1",
        "items#top",
    ],
)
async def test_paths_that_could_leave_the_api_are_refused(apis: Setup, path: str) -> None:
    count = len(apis.server.seen)
    with pytest.raises(ValidationError):  # the arguments do not validate ...
        apis.args(api="local", path=path)
    schema = apis.tool.spec.input_schema
    assert _schema_error({"api": "local", "path": path}, schema)  # nor does a plan step ...
    with pytest.raises(ToolRefusal):  # ... and the call refuses them anyway
        await apis.http.get(HttpGetArgs.model_construct(api="local", path=path, params={}))
    assert len(apis.server.seen) == count  # nothing was sent


def _schema_error(args: dict[str, Any], schema: dict[str, Any]) -> str | None:
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(args)
    )
    return None if error is None else error.message


@pytest.mark.parametrize("path", ["", "/", "items/1", "/items/1", "a/b.c/d..e", "x%20y"])
def test_ordinary_paths_stay_under_the_base(apis: Setup, path: str) -> None:
    args = apis.args(api="local", path=path)
    assert _schema_error(args.model_dump(), apis.tool.spec.input_schema) is None
    api = load_http_apis(apis.apis_file).apis["local"]
    url = build_url(api, path, {"q": "a b"})
    assert str(url).startswith(f"{apis.server.base}/v1")
    assert url.params["q"] == "a b"


def test_the_allowlist_is_in_the_schema_and_routes_each_api_to_its_queue(apis: Setup) -> None:
    spec = apis.tool.spec
    assert spec.input_schema["properties"]["api"]["enum"] == ["local", "secret"]
    assert spec.activity_queue({"api": "local", "path": "x"}) == "keel-http-local"
    assert spec.activity_queue({"api": "secret"}) == "keel-http-secret"
    for bad in ("nope", "LOCAL", None, ""):
        with pytest.raises(ValueError, match="http_get: api must be one of"):
            spec.activity_queue({"api": bad})
    with pytest.raises(ValidationError):
        apis.args(api="nope", path="items/1")
    assert "items by id" in spec.description and apis.server.base in spec.description
    assert apis.secret not in spec.model_dump_json()
    assert spec.side_effects == SideEffects.EXTERNAL and spec.idempotent
    assert spec.max_attempts == 3 and spec.timeout_s == 5 + 5  # the APIs' timeout and a margin


def test_http_get_is_registered_only_with_an_apis_file(apis: Setup, tmp_path: Path) -> None:
    assert "http_get" in {s.name for s in default_registry(apis.settings).specs()}
    assert "http_get" not in {s.name for s in default_registry(Settings(home=tmp_path)).specs()}


def test_one_api_still_has_an_enum(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"apis": {"only": api_entry()}}))
    spec = http_get_tool(load_http_apis(path)).spec
    assert spec.input_schema["properties"]["api"]["enum"] == ["only"]
    assert spec.requires_approval  # by default a person approves what leaves the machine
    path.write_text(json.dumps({"apis": {"only": api_entry(requires_approval=False)}}))
    assert not http_get_tool(load_http_apis(path)).spec.requires_approval
    with pytest.raises(ValueError):
        spec.activity_queue({"api": "other"})


def api_entry(base_url: str = "https://a.example", **fields: Any) -> dict[str, Any]:
    return {"base_url": base_url, "rate_per_s": 1, **fields}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read it (No such file or directory)"),
        ("{", "not JSON (line 1, column 2: Expecting property name"),
        ({"apis": {}}, "apis: Dictionary should have at least 1 item"),
        ({"apis": {"Bad-Name": api_entry()}}, "apis.Bad-Name: API name 'Bad-Name': use lowercase"),
        ({"apis": {"a": api_entry("ftp://a.example")}}, "apis.a.base_url: 'ftp://a.example' is"),
        ({"apis": {"a": api_entry("https://u:p@a.example")}}, "apis.a.base_url: no credentials"),
        ({"apis": {"a": {"base_url": "https://a.example"}}}, "apis.a.rate_per_s: Field required"),
        ({"apis": {"a": api_entry(rate_per_s=0)}}, "apis.a.rate_per_s: Input should be greater"),
        ({"apis": {"a": api_entry(rate=2)}}, "apis.a.rate: Extra inputs are not permitted"),
        ({"apis": {"a": api_entry(schema={"type": 5})}}, "apis.a.schema: not a valid JSON Schema"),
        (
            {"apis": {"a": api_entry(headers_env={"X-Key": "not a var"})}},
            "apis.a.headers_env: 'not a var' (header X-Key) is not an environment variable name",
        ),
        (
            {"apis": {"a": api_entry(content_types=["json"])}},
            "apis.a.content_types: 'json' is not a media type",
        ),
    ],
)
def test_a_bad_apis_file_is_one_clear_line(tmp_path: Path, content: Any, expected: str) -> None:
    path = tmp_path / "apis.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SettingsError) as bad:
        load_http_apis(path)
    message = str(bad.value)
    assert message.startswith(f"KEEL_HTTP_APIS='{path}': ") and "\n" not in message
    assert expected in message
    assert message.endswith("fix the file (the format is in the README, section http_get)")


async def test_a_missing_or_broken_secret_is_a_refusal_naming_the_variable(apis: Setup) -> None:
    count = len(apis.server.seen)
    http = HttpGet(load_http_apis(apis.apis_file), environ={})
    expected = f"needs header Authorization from environment variable {TOKEN_VAR}, which is not"
    with pytest.raises(ToolRefusal, match=re.escape(expected)):
        await http.get(apis.args(api="secret", path="items/1"))
    broken = "Bearer abc\r\nX-Injected: 1"
    http = HttpGet(load_http_apis(apis.apis_file), environ={TOKEN_VAR: broken})
    with pytest.raises(ToolRefusal) as refused:
        await http.get(apis.args(api="secret", path="items/1"))
    assert f"variable {TOKEN_VAR} (header Authorization) holds characters" in str(refused.value)
    assert "abc" not in str(refused.value)
    assert len(apis.server.seen) == count


# --- through Temporal ------------------------------------------------------------------------


@dataclass
class HttpStack:
    stack: Stack
    queues: Queues
    apis: Setup
    workers: list[Worker]

    async def run(
        self, task: str, *steps: dict[str, Any]
    ) -> tuple[TaskResult, WorkflowHandle[Any, TaskResult]]:
        self.stack.model.script(task, "plan", scripted_plan(*steps))
        request = TaskRequest(task=task, max_replans=0)
        handle = await start_task(self.stack.client, request, queues=self.queues)
        return await handle.result(), handle


@pytest.fixture(scope="module")
async def http_stack(temporal_env: WorkflowEnvironment, apis: Setup) -> AsyncIterator[HttpStack]:
    """Every Keel worker on queues of its own; the tools process has the APIs file, so it
    also runs one worker per API, on `<prefix>keel-http-<api>`."""
    queues = Queues(prefix=f"http{uuid.uuid4().hex[:8]}-")
    components, model = scripted_components(apis.settings, queues)
    workers = build_all(temporal_env.client, components)
    try:
        async with workers_running(workers):
            stack = Stack(temporal_env, temporal_env.client, apis.settings, model, components)
            yield HttpStack(stack, queues, apis, workers)
    finally:
        components.close_memory()


def test_the_tools_process_runs_a_rate_limited_worker_per_api(http_stack: HttpStack) -> None:
    queues = http_stack.queues
    running = {w.task_queue: w.config() for w in http_stack.workers}
    assert queues.tools in running and queues.agent in running
    http_queues = [q for q in running if "keel-http" in q]
    assert http_queues == [queues.name("keel-http-local"), queues.name("keel-http-secret")]
    rates = [running[q].get("max_task_queue_activities_per_second") for q in http_queues]
    assert rates == [RATE_PER_S, 50]
    assert [activity_names(running[q]) for q in http_queues] == [["tool.http_get"]] * 2
    assert "tool.http_get" not in activity_names(running[queues.tools])


def activity_names(config: WorkerConfig) -> list[str]:
    return [getattr(a, "__temporal_activity_definition").name for a in config["activities"]]


def get_step(step_id: str, api: str, path: str, **params: str) -> dict[str, Any]:
    args = {"api": api, "path": path, "params": params}
    return {"id": step_id, "tool": "http_get", "args": args}


def dispatch_span_floor(n: int, rate: float, partitions: int, burst_s: float = 1.0) -> float:
    """The least time from the first to the n-th dispatch of a task queue limited to `rate`
    tasks/s, as Temporal's matching service limits it (service/matching/ratelimit_manager.go
    and matcher_data.go): each of the queue's `partitions` gets `rate / partitions` with a
    GCRA limiter that allows a burst of `burst_s`, so its k-th task (from 0) goes no earlier
    than k * interval - burst_s after its first. The n earliest slots over all partitions
    are the best case, however the tasks happen to be spread over the partitions."""
    interval = partitions / rate
    slots = sorted(max(0.0, k * interval - burst_s) for _ in range(partitions) for k in range(n))
    return slots[n - 1]


def test_the_dispatch_floor_matches_the_limiter() -> None:
    assert dispatch_span_floor(6, 2.0, 1) == 1.5  # 3 at once (1 + 2/s * 1 s), then 0.5 s apart
    assert dispatch_span_floor(6, 2.0, 4) == 1.0  # 0.5/s per partition: 4 at once, 4 at 1 s
    assert [dispatch_span_floor(9, 2.0, p) for p in (1, 2, 4, 8)] == [3.0, 3.0, 3.0, 3.0]


async def partition_count(client: Client, queue: str) -> int:
    answer = await client.workflow_service.list_task_queue_partitions(
        ListTaskQueuePartitionsRequest(namespace=client.namespace, task_queue=TaskQueue(name=queue))
    )
    return len(answer.activity_task_queue_partitions)


async def effective_rate(client: Client, queue: str) -> tuple[float, int]:
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            report_config=True,
        )
    )
    limit = described.effective_rate_limit
    return limit.requests_per_second, limit.rate_limit_source


RATE_STEPS = 9


async def test_the_server_holds_an_api_to_its_rate(http_stack: HttpStack) -> None:
    """Nine independent calls are scheduled at once; the server hands them to the API's
    worker no faster than 2/s after its burst, so the API sees them spread out."""
    client, queue = http_stack.stack.client, http_stack.queues.name("keel-http-local")
    run = uuid.uuid4().hex
    steps = [get_step(f"g{i}", "local", f"items/{i}", run=run) for i in range(RATE_STEPS)]
    result, handle = await http_stack.run(unique("Fetch nine items"), *steps)

    assert result.status == TaskStatus.COMPLETED, result.error
    ids = sorted(s.output["json"]["id"] for s in result.steps if s.output is not None)
    assert ids == list(range(RATE_STEPS))
    times = sorted(s.at for s in http_stack.apis.server.requests(run))
    assert len(times) == RATE_STEPS
    spread = times[-1] - times[0]
    partitions = await partition_count(client, queue)
    floor = dispatch_span_floor(RATE_STEPS, RATE_PER_S, partitions)
    gaps = ", ".join(f"{b - a:.2f}" for a, b in itertools.pairwise(times))
    print(f"\n{RATE_STEPS} calls, {RATE_PER_S:g}/s, {partitions} partitions: first to last "
          f"{spread:.2f} s (floor {floor:.2f} s); gaps {gaps}")  # fmt: skip
    events = (await handle.fetch_history()).events
    calls = {
        e.event_id
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "tool.http_get"
    }
    started = sorted(
        e.event_time.ToDatetime().timestamp()
        for e in events
        if e.HasField("activity_task_started_event_attributes")
        and e.activity_task_started_event_attributes.scheduled_event_id in calls
    )
    dispatched = started[-1] - started[0]
    print(f"dispatched over {dispatched:.2f} s")
    # The server took the rate from the worker's polls ...
    rate = await effective_rate(client, queue)
    assert rate == (RATE_PER_S, RateLimitSource.RATE_LIMIT_SOURCE_WORKER)
    # ... and held the calls to it: nine calls cannot all fit in the burst. The server's
    # dispatch times (each call's start in history) are what it holds to the rate.
    assert floor >= 2.0
    assert dispatched >= floor - 0.05
    # The API sees them spread out too, each later by the worker's latency: the first call of
    # a worker is slower (its connection), which a busy machine stretches to a few tenths.
    assert spread >= floor - 0.5


async def test_a_flaky_api_is_retried_and_the_secret_never_reaches_history(
    http_stack: HttpStack,
) -> None:
    key, server = uuid.uuid4().hex, http_stack.apis.server
    result, handle = await http_stack.run(
        unique("Fetch from the secret API"),
        get_step("s1", "secret", "flaky", key=key),
        get_step("s2", "secret", "items/5", run=key),
    )

    assert result.status == TaskStatus.COMPLETED, result.error
    assert [s.status for s in result.steps] == [StepStatus.SUCCEEDED] * 2
    flaky = next(s for s in result.steps if s.step_id == "s1")
    assert flaky.output is not None and flaky.output["json"]["name"] == f"recovered {key}"
    assert server.attempts[key] == 2  # a 500, then Temporal's retry
    sent = [s.headers.get("authorization") for s in server.seen if key in s.query.values()]
    assert sent == [http_stack.apis.secret] * 3  # every request carried the secret ...

    history = await handle.fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert f"item 5 {key}".encode() in raw  # (the search does see the payloads)
    assert http_stack.apis.secret.encode() not in raw  # ... and no event holds it
    assert http_stack.apis.secret.removeprefix("Bearer ") not in history.to_json()


async def test_an_api_outside_the_allowlist_is_refused_before_scheduling(
    http_stack: HttpStack,
) -> None:
    count = len(http_stack.apis.server.seen)
    result, handle = await http_stack.run(
        unique("Fetch from an API nobody allowed"),
        {"id": "s1", "tool": "http_get", "args": {"api": "evil", "path": "items/1"}},
    )

    assert result.status == TaskStatus.FAILED
    assert result.steps == []
    assert "api: 'evil' is not one of ['local', 'secret']" in (result.error or "")
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in (await handle.fetch_history()).events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert "tool.http_get" not in scheduled and "plan" in scheduled
    assert len(http_stack.apis.server.seen) == count
