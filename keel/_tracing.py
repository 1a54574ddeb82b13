"""Traces of Keel's tasks (OpenTelemetry), one trace per task.

The Temporal SDK's `TracingInterceptor`, installed by KeelPlugin on every client, worker and
replayer, carries the trace context from the client that starts a task into its workflow,
each activity, each sub-agent's child workflow and each continue-as-new run. Its workflow
spans are made outside the sandbox and only when the workflow is not replaying, so a replay
(a worker restart, a cache eviction, the Replayer) adds none. Keel adds a span per model
call (in the model router) and per tool call (in the tool activities' validated path).

Tracing is on in a process when KEEL_OTLP_ENDPOINT is set (spans go to that OTLP/HTTP
endpoint) or when the application set a global TracerProvider before connecting (its
exporters get the spans). Otherwise no interceptor is installed and the model and tool spans
are the OpenTelemetry API's no-ops.

No span carries free text: names, ids, numbers and outcomes only. The task, prompts,
answers, tool arguments and error messages are user data (encrypted in history under
KEEL_ENCRYPTION_KEYS), so an exception is recorded as its type alone, also on the SDK's own
spans (`_Redacted`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util import types

from keel.errors import BudgetExceeded, InvalidToolOutput, ToolRefusal

if TYPE_CHECKING:
    from temporalio.contrib.opentelemetry import TracingInterceptor

    from keel.contracts import ModelUsage

TRACER_NAME = "keel"
DEFAULT_SERVICE_NAME = "keel"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one

# Attribute names: OpenTelemetry's GenAI conventions where one fits, keel.* for the rest.
OPERATION = "gen_ai.operation.name"
MODEL = "gen_ai.request.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
TOOL = "gen_ai.tool.name"
ROLE = "keel.model.role"
COST_USD = "keel.cost_usd"
LATENCY_MS = "keel.latency_ms"
OUTCOME = "keel.tool.outcome"
DURATION_MS = "keel.tool.duration_ms"
STEP_ID = "keel.step_id"
ERROR_TYPE = "error.type"

# How long one export of a batch may take, retries included (a collector that is down
# costs a command at most this at exit).
EXPORT_TIMEOUT_S = 2.0
_TIMEOUT_VARS = {"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"}

# One span processor per endpoint per process: every client of the process shares it.
_exporting: set[str] = set()


def _configured() -> bool:
    """Whether someone set a global TracerProvider (the API's default is a proxy of none)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def export_to(endpoint: str) -> None:
    """Send this process's spans to the OTLP/HTTP `endpoint`: through the application's
    TracerProvider when it set one, else through one made here (batched, flushed at exit)."""
    if endpoint in _exporting:
        return
    # The SDK is imported only by a process that exports.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from keel.errors import ServiceStartError

    if not _configured():
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        trace.set_tracer_provider(TracerProvider(resource=resource))
    provider: Any = trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        raise ServiceStartError(
            f"KEEL_OTLP_ENDPOINT={endpoint}: the application's tracer provider "
            f"({type(provider).__name__}) takes no span processors; export from it instead, "
            "and unset KEEL_OTLP_ENDPOINT"
        )
    # The exporter reads OTEL_EXPORTER_OTLP_HEADERS (a collector's credentials) itself. Its
    # own default deadline (10 s of retries) would hold every short command at exit while
    # the collector is down: EXPORT_TIMEOUT_S unless OTEL_EXPORTER_OTLP_*TIMEOUT says.
    timeout = None if _TIMEOUT_VARS & os.environ.keys() else EXPORT_TIMEOUT_S
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=timeout))
    )
    _exporting.add(endpoint)


def interceptors(endpoint: str | None) -> list[TracingInterceptor]:
    """The SDK's tracing interceptor when tracing is on in this process, else none (so a
    process that does not trace pays nothing for it)."""
    if endpoint:
        export_to(endpoint)
    elif not _configured():
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(tracer())]


def tracer() -> Tracer:
    """Keel's tracer, recording exceptions without their messages. Looked up at each use, so
    the provider is whichever is global then (an application may set it after import)."""
    return _RedactingTracer(trace.get_tracer(TRACER_NAME))


@contextmanager
def model_call(role: str, model: str) -> Iterator[Span]:
    """The span of one model call; `model_usage` fills in what it used and cost."""
    with tracer().start_as_current_span(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes={OPERATION: "chat", MODEL: model, ROLE: role},
    ) as span:
        yield span


def model_usage(span: Span, usage: ModelUsage) -> None:
    span.set_attributes(
        {
            INPUT_TOKENS: usage.input_tokens,
            OUTPUT_TOKENS: usage.output_tokens,
            COST_USD: usage.usd,
            LATENCY_MS: usage.latency_ms,
        }
    )


def tool_outcome(err: BaseException | None) -> str:
    if err is None:
        return "ok"
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    if isinstance(err, InvalidToolOutput):
        return "invalid_output"
    if isinstance(err, ToolRefusal):
        return "refused"
    if isinstance(err, BudgetExceeded):
        return "budget_exceeded"
    return "failed"  # a bug or an outage: retried when the tool is idempotent


@contextmanager
def tool_call(tool: str, step_id: str | None) -> Iterator[Span]:
    """The span of one tool call (one attempt), with its outcome and duration."""
    attributes: dict[str, types.AttributeValue] = {OPERATION: "execute_tool", TOOL: tool}
    if step_id:
        attributes[STEP_ID] = step_id
    started = time.perf_counter()
    with tracer().start_as_current_span(
        f"execute_tool {tool}", kind=SpanKind.INTERNAL, attributes=attributes
    ) as span:
        err: BaseException | None = None
        try:
            yield span
        except BaseException as raised:  # CancelledError too: a cancelled call is an outcome
            err = raised
            raise
        finally:
            span.set_attribute(OUTCOME, tool_outcome(err))
            span.set_attribute(DURATION_MS, round((time.perf_counter() - started) * 1000, 3))
            if isinstance(err, asyncio.CancelledError):  # no Exception: the API records none
                span.set_attribute(ERROR_TYPE, "CancelledError")


def _error_type(exception: BaseException) -> str:
    """A failure's durable type name (ToolError, BudgetExceeded, ...) where it has one, else
    its class: never its message."""
    kind = getattr(exception, "type", None)
    return kind if isinstance(kind, str) and kind else type(exception).__qualname__


class _Redacted(Span):
    """A span whose exceptions and error statuses keep their type, never their text."""

    def __init__(self, span: Span) -> None:
        self._span = span

    def end(self, end_time: int | None = None) -> None:
        self._span.end(end_time)

    def get_span_context(self) -> SpanContext:
        return self._span.get_span_context()

    def set_attributes(self, attributes: types.Attributes) -> None:
        self._span.set_attributes(attributes or {})

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        self._span.add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        self._span.add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self._span.update_name(name)

    def is_recording(self) -> bool:
        return self._span.is_recording()

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        code = status.status_code if isinstance(status, Status) else status
        self._span.set_status(code)  # the description is the exception's message

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._span.set_attribute(ERROR_TYPE, _error_type(exception))
        self._span.add_event(
            "exception",
            {"exception.type": _error_type(exception), "exception.escaped": escaped},
            timestamp,
        )


class _RedactingTracer(Tracer):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        return _Redacted(
            self._tracer.start_span(
                name,
                context,
                kind,
                attributes,
                links,
                start_time,
                # the API's own recording would bypass _Redacted
                record_exception=False,
                set_status_on_exception=False,
            )
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API's own decorator is private
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current
