"""Traces (keel/_tracing.py): a real task on the dev server, with a sub-agent, a tool that
fails once and model calls, traced through the SDK's tracing interceptor into an in-memory
exporter; its spans checked against the task's ledger, the workflow histories and its text.

The exporter hangs on the process's global TracerProvider, as an application's own would.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util._once import Once
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer, Worker

from activities.models.scripted import ScriptedModel
from activities.notify import Notifier
from activities.tools.registry import Tool, ToolContext, define_tool
from keel import _tracing as tracing
from keel._identity import issue, parse_identity_keys
from keel._ports import LOCALHOST, free_port
from keel._queues import Queues
from keel.client import connect, start_task
from keel.contracts import Budget, TaskRequest, TaskResult, TaskStatus
from keel.plugin import KeelPlugin
from keel.settings import SettingsError, settings_from_env
from keel.testing import Stack, scripted_components, scripted_plan, scripted_workers
from tests.conftest import REPO, unique
from workers.agent import WORKFLOW_BUGS
from workers.process import build_all, workers_running
from workflows.agent_task import AgentTask
from workflows.memorize import MemorizeDocuments


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The application's TracerProvider, set before Keel connects. The API lets a process set
    one only once: it is taken away after this module (as OpenTelemetry's own test helpers
    do), so the tests after it run untraced, as they do on their own."""
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
        provider.shutdown()


class LeakyInput(BaseModel):
    key: str


class LeakyOutput(BaseModel):
    attempts: int


LEAKY_ATTEMPTS: Counter[str] = Counter()


async def _leaky(args: LeakyInput, ctx: ToolContext) -> LeakyOutput:
    """Fails its first attempt with an error that quotes its input (the task's text)."""
    LEAKY_ATTEMPTS[args.key] += 1
    if LEAKY_ATTEMPTS[args.key] == 1:
        raise RuntimeError(f"outage while serving {args.key!r}")
    return LeakyOutput(attempts=LEAKY_ATTEMPTS[args.key])


def leaky_tools() -> list[Tool]:
    return [
        define_tool(
            "leaky",
            "A service that fails once, quoting its input.",
            _leaky,
            LeakyInput,
            LeakyOutput,
            cost_per_call_usd=0.0001,
        )
    ]


def named(found: Iterable[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in found if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


def parent_of(span: ReadableSpan, found: Sequence[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    [parent] = [s for s in found if s.context.span_id == span.parent.span_id]
    return parent


def attribute(span: ReadableSpan, key: str) -> object:
    return (span.attributes or {})[key]


def number(span: ReadableSpan, key: str) -> float:
    value = attribute(span, key)
    assert isinstance(value, int | float), (span.name, key, value)
    return value


def outcome_of(span: ReadableSpan) -> tuple[object, object]:
    at = span.attributes or {}
    return at[tracing.TOOL], at[tracing.OUTCOME]


def texts_of(span: ReadableSpan) -> list[str]:
    """Every string a span carries out of the process."""
    values: list[object] = [span.name, span.status.description or ""]
    values += list((span.attributes or {}).values())
    for event in span.events:
        values += [event.name, *(event.attributes or {}).values()]
    return [str(v) for v in values]


async def scheduled_activities(handle: WorkflowHandle[object, TaskResult]) -> Counter[str]:
    history = await handle.fetch_history()
    return Counter(
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )


@pytest.fixture
async def traced(
    stack: Stack, spans: InMemorySpanExporter, tmp_path: Path
) -> AsyncIterator[tuple[Client, Queues, ScriptedModel]]:
    """Keel's workers on a client connected after the provider was set, on queues of their
    own; the orchestrator keeps no workflow in its cache, so each workflow task replays the
    history so far (a replay that made spans again would show as duplicates)."""
    settings = stack.settings.model_copy(update={"home": tmp_path / "home"})
    client = await connect(settings, stack.address)
    queues = Queues("traces-")
    components, model = scripted_components(settings, queues, leaky_tools())
    orchestrator = Worker(
        client,
        task_queue=queues.agent,
        workflows=[AgentTask, MemorizeDocuments],
        activities=[Notifier(settings).notify_human],
        workflow_failure_exception_types=list(WORKFLOW_BUGS),
        max_cached_workflows=0,
    )
    others = build_all(client, components, ("planner", "llm", "tools", "memory"))
    try:
        async with workers_running([orchestrator, *others]):
            yield client, queues, model
    finally:
        components.close_memory()


async def test_a_task_is_one_trace_whose_model_and_tool_spans_match_its_ledger(
    stack: Stack, spans: InMemorySpanExporter, traced: tuple[Client, Queues, ScriptedModel]
) -> None:
    client, queues, model = traced
    task, sub_task = unique("Have the coder work out 6*7, then ask"), unique("compute 6*7")
    model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "coder", "args": {"task": sub_task}},
            {"id": "s2", "tool": "leaky", "args": {"key": task}},
        ),
    )
    model.script(
        sub_task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
    )
    spans.clear()
    request = TaskRequest(task=task, budget=Budget(usd=0.05), max_replans=0)
    handle = await start_task(client, request, queues=queues)
    result = await handle.result()
    child = client.get_workflow_handle(f"{handle.id}.coder.v1.s1", result_type=TaskResult)
    child_result = await child.result()
    assert result.status == TaskStatus.COMPLETED, result.error
    assert child_result.status == TaskStatus.COMPLETED, child_result.error
    found = spans.get_finished_spans()

    # one trace: the client's start span is its root, every span of the task is in it
    [root] = named(found, "StartWorkflow:AgentTask")
    assert root.parent is None and root.attributes == {"temporalWorkflowID": handle.id}
    assert {s.context.trace_id for s in found} == {root.context.trace_id}

    # the workflows: each run once (no span again on the replays), the child under its start
    runs = named(found, "RunWorkflow:AgentTask")
    assert sorted(str((s.attributes or {})["temporalWorkflowID"]) for s in runs) == sorted(
        [handle.id, child.id]
    )
    by_workflow = {(s.attributes or {})["temporalWorkflowID"]: s for s in runs}
    assert parent_of(by_workflow[handle.id], found) is root
    [start_child] = named(found, "StartChildWorkflow:AgentTask")
    assert parent_of(by_workflow[child.id], found) is start_child
    assert len(named(found, "CompleteWorkflow:AgentTask")) == 2

    # the activities: one StartActivity span per activity the histories scheduled, none
    # twice; each attempt a RunActivity span under its StartActivity
    scheduled = await scheduled_activities(handle) + await scheduled_activities(child)
    started = Counter(s.name.removeprefix("StartActivity:") for s in named(found, "StartActivity:"))
    assert started == scheduled
    attempts = named(found, "RunActivity:")
    assert Counter(s.name.removeprefix("RunActivity:") for s in attempts) == scheduled + Counter(
        {"tool.leaky": 1}  # its failed attempt
    )
    for attempt in attempts:
        assert parent_of(attempt, found).name == attempt.name.replace("Run", "Start", 1)

    # model calls: one span each, under the activity that made it, with what the ledger booked
    models = named(found, "chat ")
    booked = [e for r in (result, child_result) for e in r.ledger.entries if e.kind == "model"]
    assert models and len(models) == sum(e.calls for e in booked if not e.cached)
    assert all(parent_of(s, found).name.startswith("RunActivity:") for s in models)

    spanned = sorted(
        (str(attribute(s, tracing.ROLE)), str(attribute(s, tracing.MODEL)))
        + tuple(
            number(s, k) for k in (tracing.INPUT_TOKENS, tracing.OUTPUT_TOKENS, tracing.COST_USD)
        )
        for s in models
    )
    ledgered = sorted(
        (e.role, e.name, e.input_tokens, e.output_tokens, e.usd) for e in booked if not e.cached
    )
    assert [k[:4] for k in spanned] == [k[:4] for k in ledgered]
    for a, b in zip(spanned, ledgered, strict=True):
        assert math.isclose(float(a[4]), b[4], rel_tol=1e-9)
    assert {s.name for s in models} == {f"chat {k[1]}" for k in ledgered}

    # tool calls: one span per attempt under its activity, its outcome what the ledger says
    tools = named(found, "execute_tool ")
    outcomes = [outcome_of(s) for s in tools]
    assert sorted(outcomes) == [("calculator", "ok"), ("leaky", "failed"), ("leaky", "ok")]
    for span in tools:
        assert parent_of(span, found).name == f"RunActivity:tool.{attribute(span, tracing.TOOL)}"
        assert number(span, tracing.DURATION_MS) > 0
    ledger_tools = [e for r in (result, child_result) for e in r.ledger.entries if e.kind == "tool"]
    assert sorted((e.name, e.ok) for e in ledger_tools) == [("calculator", True), ("leaky", True)]
    for entry in ledger_tools:
        [ok] = [s for s in tools if outcome_of(s) == (entry.name, "ok")]
        assert (ok.attributes or {})[tracing.COST_USD] == entry.usd
    [failed] = [s for s in tools if outcome_of(s) == ("leaky", "failed")]
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})[tracing.ERROR_TYPE] == "RuntimeError"
    [failed_attempt] = [s for s in attempts if s.status.status_code == StatusCode.ERROR]
    assert (failed_attempt.attributes or {})[tracing.ERROR_TYPE] == "ToolFailed"

    # no text of the task leaves in a span: not the task, the sub-task, nor the error that
    # quoted it (the SDK's own spans would carry that error's message)
    for span in found:
        for text in texts_of(span):
            assert task not in text and sub_task not in text, (span.name, text)
            assert "outage while serving" not in text, (span.name, text)

    # replaying the histories (as a new worker or the replay tests do) adds no span
    before = len(spans.get_finished_spans())
    replayer = Replayer(
        workflows=[AgentTask, MemorizeDocuments], plugins=[KeelPlugin(stack.settings)]
    )
    for run in (handle, child):
        await replayer.replay_workflow(await run.fetch_history())
    assert len(spans.get_finished_spans()) == before


async def test_signed_and_encrypted_tasks_trace_the_same(
    stack: Stack, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    workers_settings = stack.settings.model_copy(
        update={
            "home": tmp_path / "home",
            "identity_keys": f"id1:{key}",
            "encryption_keys": f"k1:{base64.b64encode(os.urandom(32)).decode()}",
        }
    )
    alice = issue(parse_identity_keys(f"id1:{key}"), "alice")
    caller_settings = workers_settings.model_copy(
        update={"identity_keys": None, "credential": alice.encode()}
    )
    workers_client = await connect(workers_settings, stack.address)
    caller = await connect(caller_settings, stack.address)
    queues = Queues("traces-signed-")
    task = unique("What is 6*7 for alice, in secret")
    spans.clear()
    async with scripted_workers(workers_client, workers_settings, queues) as (_, model):
        model.script(
            task,
            "plan",
            scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
        )
        handle = await start_task(caller, TaskRequest(task=task), queues=queues)
        result = await handle.result()

    assert result.status == TaskStatus.COMPLETED and "42" in result.answer
    found = spans.get_finished_spans()
    [root] = named(found, "StartWorkflow:AgentTask")
    assert {s.context.trace_id for s in found} == {root.context.trace_id}
    [tool] = named(found, "execute_tool ")
    assert parent_of(tool, found).name == "RunActivity:tool.calculator"
    assert named(found, "chat ") and named(found, "RunWorkflow:AgentTask")
    assert not any(task in text for span in found for text in texts_of(span))


def test_a_bad_otlp_endpoint_is_one_line() -> None:
    for bad, why in (
        ("collector:4318", "not an http"),
        ("http://collector:4318", "has no path"),
        ("http://collector:99999/v1/traces", "not a URL"),
        ("http://collector/" + "x" * 3000, "longer than 2048"),
    ):
        with pytest.raises(SettingsError, match=why) as refused:
            settings_from_env({"KEEL_OTLP_ENDPOINT": bad})
        assert str(refused.value).startswith("KEEL_OTLP_ENDPOINT=")
        assert "\n" not in str(refused.value)
    ok = "http://collector:4318/v1/traces"
    assert settings_from_env({"KEEL_OTLP_ENDPOINT": ok}).otlp_endpoint == ok
    assert settings_from_env({}).otlp_endpoint is None


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_keel_otlp_endpoint_sends_a_processes_spans_there() -> None:
    """In a process of its own (the global provider is set once per process): no provider
    set, KEEL_OTLP_ENDPOINT set; a span made through Keel reaches the endpoint by exit."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    port = free_port()
    server = HTTPServer((LOCALHOST, port), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    probe = (
        "from keel.plugin import KeelPlugin\n"
        "from keel.settings import get_settings\n"
        "from keel import _tracing\n"
        "KeelPlugin(get_settings())\n"
        "with _tracing.tool_call('calculator', 's1'):\n"
        "    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["KEEL_OTLP_ENDPOINT"] = f"http://{LOCALHOST}:{port}/v1/traces"
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", probe],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    [(path, body)] = _Collector.received
    assert path == "/v1/traces"
    sent = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = sent.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "keel"
    [span] = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "execute_tool calculator"
