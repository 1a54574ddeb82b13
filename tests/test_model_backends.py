"""The `openai` and `anthropic` backends against real local endpoints.

OpenAI: llama-cpp-python's OpenAI-compatible server running SmolLM2 (a real server, a real
model, real usage). Anthropic: a local HTTP endpoint replaying the Messages API wire format,
including its errors, to check that failures become the right Temporal retries.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import jsonschema
import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.models.anthropic_chat import OUTPUT_TOOL, AnthropicModel
from activities.models.base import Message, ModelRequest
from activities.models.llama_server import LlamaServer
from activities.models.llamacpp import SMOLLM2_NAME, default_model_path
from activities.models.openai_chat import OpenAIModel, strict_compatible
from activities.models.prices import price_of
from activities.models.provider_errors import MAX_RETRY_DELAY_S, status_error
from activities.models.router import ModelRouter, build_model
from activities.planning import plan_output_schema, planning_prompt
from activities.reasoning import ReasoningActivities
from activities.tools.builtin import default_registry
from keel._ports import free_port
from keel._queues import Queues
from keel.client import start_task
from keel.contracts import PlanRequest, Synthesis, SynthesisRequest, TaskRequest, TaskStatus
from keel.durable import (
    MODEL_AUTH_ERROR,
    MODEL_BAD_REQUEST,
    MODEL_QUOTA_EXCEEDED,
    MODEL_RATE_LIMITED,
    MODEL_UNAVAILABLE,
)
from keel.settings import Settings
from keel.testing import Stack
from tests.conftest import unique
from tests.servers import (
    FakeAnthropic,
    anthropic_error,
    anthropic_text,
    anthropic_tool_use,
)
from workers.components import Components
from workers.process import build_all, workers_running

API_KEY = "test-key-" + uuid.uuid4().hex[:8]
CLAUDE = "claude-haiku-4-5"  # priced in activities/models/prices.py


@pytest.fixture(scope="session")
async def llama_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaServer]:
    """llama-cpp-python's OpenAI-compatible server with a known API key (so that auth errors
    can be tested against it). One thread: llama.cpp's threads spin-wait for each other, so
    with as many threads as cores, tests running beside it slow it from seconds to minutes."""
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    server = LlamaServer(default_model_path(), SMOLLM2_NAME, 1, log, api_key=API_KEY)
    await server.ensure_running()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(API_KEY)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
async def openai_model(llama_server: LlamaServer) -> AsyncIterator[OpenAIModel]:
    model = OpenAIModel(SMOLLM2_NAME, api_key=API_KEY, base_url=llama_server.base_url)
    yield model
    await model.aclose()


@pytest.fixture
async def claude(fake_anthropic: FakeAnthropic) -> AsyncIterator[AnthropicModel]:
    model = AnthropicModel(CLAUDE, api_key=API_KEY, base_url=fake_anthropic.base_url)
    yield model
    await model.aclose()


# --- provider errors (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retryable", "delay"),
    [
        (401, {"error": {"message": "bad key"}}, {}, MODEL_AUTH_ERROR, False, None),
        (403, {"error": {"message": "no"}}, {}, MODEL_AUTH_ERROR, False, None),
        (429, {"error": {"message": "slow"}}, {"retry-after": "3"}, MODEL_RATE_LIMITED, True, 3),
        (429, {}, {"retry-after-ms": "250"}, MODEL_RATE_LIMITED, True, 0.25),
        (429, {}, {"retry-after": "86400"}, MODEL_RATE_LIMITED, True, MAX_RETRY_DELAY_S),
        (
            429,
            {"message": "q", "code": "insufficient_quota"},
            {},
            MODEL_QUOTA_EXCEEDED,
            False,
            None,
        ),
        (
            529,
            {"error": {"type": "overloaded_error"}},
            {"retry-after": "7"},
            MODEL_UNAVAILABLE,
            True,
            7,
        ),
        (503, {}, {}, MODEL_UNAVAILABLE, True, None),
        (500, {}, {"x-should-retry": "false"}, MODEL_UNAVAILABLE, False, None),
        (400, {"error": {"message": "bad schema"}}, {}, MODEL_BAD_REQUEST, False, None),
        (404, {"error": {"message": "no such model"}}, {}, MODEL_BAD_REQUEST, False, None),
        (422, {"detail": "invalid"}, {}, MODEL_BAD_REQUEST, False, None),
    ],
)
def test_status_errors(
    status: int,
    body: dict[str, object],
    headers: dict[str, str],
    kind: str,
    retryable: bool,
    delay: float | None,
) -> None:
    err = status_error(
        provider="openai",
        model="gpt-4o-mini",
        key_env="KEEL_OPENAI_API_KEY",
        status=status,
        headers=headers,
        body=body,
        fallback_message=f"Error code: {status}",
    )
    assert err.type == kind
    assert err.non_retryable is not retryable
    assert err.next_retry_delay == (None if delay is None else timedelta(seconds=delay))
    assert "\n" not in err.message
    if status == 401:
        assert "set KEEL_OPENAI_API_KEY" in err.message and "bad key" in err.message


def test_missing_keys_name_the_variable() -> None:
    with pytest.raises(ValueError, match="KEEL_OPENAI_API_KEY"):
        OpenAIModel("gpt-4o-mini")
    with pytest.raises(ValueError, match="KEEL_ANTHROPIC_API_KEY"):
        AnthropicModel(CLAUDE)
    # A compatible server without auth needs no key.
    assert OpenAIModel("local", base_url="http://127.0.0.1:1/v1").name == "local"
    assert AnthropicModel(CLAUDE, base_url="http://127.0.0.1:1").name == CLAUDE


def test_strict_mode_only_for_closed_schemas() -> None:
    closed = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert strict_compatible(closed)
    assert not strict_compatible({**closed, "required": []})
    assert not strict_compatible({**closed, "additionalProperties": True})
    assert not strict_compatible({"allOf": [closed]})


# --- OpenAI backend against llama-cpp-python's OpenAI-compatible server ------------------


async def test_openai_plain_completion_reports_the_servers_usage(
    llama_server: LlamaServer, openai_model: OpenAIModel
) -> None:
    messages = [
        Message("system", "You are a concise assistant."),
        Message("user", "What is the capital of France? Answer in one word."),
    ]
    completion = await openai_model.complete(ModelRequest(messages, max_tokens=16))

    assert completion.text.strip()
    assert 0 < completion.output_tokens <= 16
    assert completion.latency_ms > 0
    # The server's own tokenizer on the chat-templated prompt gives the same input count.
    prompt = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    async with httpx.AsyncClient() as http:
        counted = await http.post(
            llama_server.base_url.removesuffix("/v1") + "/extras/tokenize/count",
            json={"input": prompt + "<|im_start|>assistant\n"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert completion.input_tokens == counted.json()["count"]
    # The pre-call estimate used to cap spend is conservative.
    assert openai_model.count_tokens(messages) >= completion.input_tokens


async def test_openai_json_schema_plan(openai_model: OpenAIModel, settings: Settings) -> None:
    specs = default_registry(settings).specs()
    files = ["handbook.md", "report.md"]
    schema = plan_output_schema(specs, files)
    request = PlanRequest(
        task="Compute 17*23 and read report.md", tools=specs, remaining_usd=0.05, max_usd=0.05
    )
    completion = await openai_model.complete(
        ModelRequest(planning_prompt(request, files), max_tokens=300, json_schema=schema)
    )

    plan = json.loads(completion.text)
    jsonschema.validate(plan, schema)
    assert plan["steps"]
    # llama-cpp-python refused the standard json_schema format; the client switched over.
    assert openai_model.structured_output == "json_object"


async def test_openai_router_call_is_priced_from_the_table(
    llama_server: LlamaServer, settings: Settings
) -> None:
    # Built the way workers build it: from settings, through the router.
    model = build_model(
        f"openai:{SMOLLM2_NAME}",
        settings.model_copy(
            update={"openai_api_key": API_KEY, "openai_base_url": llama_server.base_url}
        ),
    )
    assert isinstance(model, OpenAIModel)
    router = ModelRouter({"planner": model, "reasoner": model})
    routed = await router.complete(
        "reasoner",
        ModelRequest([Message("user", "Name one primary colour.")], max_tokens=24),
        max_usd=1.0,
    )
    usage = routed.usage
    assert usage.model == SMOLLM2_NAME and usage.role == "reasoner"
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 24
    expected = price_of(SMOLLM2_NAME).actual(
        usage.input_tokens, usage.output_tokens, usage.latency_ms / 1000
    )
    assert usage.usd == pytest.approx(expected) and usage.usd > 0
    await model.aclose()


async def test_openai_wrong_key_is_a_non_retryable_auth_error(
    llama_server: LlamaServer,
) -> None:
    model = OpenAIModel(SMOLLM2_NAME, api_key="wrong", base_url=llama_server.base_url)
    with pytest.raises(ApplicationError) as raised:
        await model.complete(ModelRequest([Message("user", "hi")], max_tokens=4))
    assert raised.value.type == MODEL_AUTH_ERROR and raised.value.non_retryable
    assert "KEEL_OPENAI_API_KEY" in raised.value.message
    await model.aclose()


async def test_openai_unreachable_server_is_retryable() -> None:
    model = OpenAIModel("local", base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ApplicationError) as raised:
        await model.complete(ModelRequest([Message("user", "hi")], max_tokens=4))
    assert raised.value.type == MODEL_UNAVAILABLE and not raised.value.non_retryable
    await model.aclose()


async def test_whole_task_with_the_planner_on_the_openai_backend(
    stack: Stack, llama_server: LlamaServer
) -> None:
    spec = f"openai:{SMOLLM2_NAME}"
    settings = stack.settings.model_copy(
        update={
            "planner_model": spec,
            "reasoner_model": spec,
            # a plan the small model gets wrong goes to the scripted planner: this test is
            # about the backend's plumbing, not the small model's plans
            "escalation_model": "scripted",
            "openai_api_key": API_KEY,
            "openai_base_url": llama_server.base_url,
        }
    )
    queues = Queues("openai-")
    components = Components(
        settings=settings,
        queues=queues,
        _vectors=stack.components.vectors,  # Qdrant local mode: one client per folder
    )
    async with workers_running(build_all(stack.client, components)):
        # a user of its own: other real-model tests ask the same task, whose cached answer
        # would stand in for this one
        handle = await start_task(
            stack.client,
            TaskRequest(task="Compute 6*7 and read handbook.md", user_id=unique("user")),
            queues=queues,
        )
        result = await asyncio.wait_for(handle.result(), timeout=240)

    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.answer.strip()
    model_entries = [e for e in result.ledger.entries if e.kind == "model"]
    served = [e for e in model_entries if e.name == SMOLLM2_NAME]
    assert len(served) >= 2 and all(e.usd > 0 for e in served)  # the plan and the answer
    assert {e.name for e in model_entries} <= {SMOLLM2_NAME, "scripted"}


# --- Anthropic backend against a Messages API endpoint ------------------------------------


async def test_anthropic_text_reply(fake_anthropic: FakeAnthropic, claude: AnthropicModel) -> None:
    fake_anthropic.script(anthropic_text("Paris.", model=CLAUDE, input_tokens=31, output_tokens=3))
    router = ModelRouter({"planner": claude, "reasoner": claude})
    routed = await router.complete(
        "reasoner",
        ModelRequest(
            [Message("system", "Be brief."), Message("user", "Capital of France?")],
            max_tokens=50,
        ),
        max_usd=0.01,
    )

    assert routed.text == "Paris."
    assert (routed.usage.input_tokens, routed.usage.output_tokens) == (31, 3)
    assert routed.usage.usd == pytest.approx(price_of(CLAUDE).estimate(31, 3))
    [sent] = fake_anthropic.requests
    assert "anthropic-version" in sent.headers
    assert sent.body["system"] == "Be brief."
    assert sent.body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert sent.body["model"] == CLAUDE and sent.body["max_tokens"] <= 50
    assert "tools" not in sent.body


async def test_anthropic_json_schema_through_a_forced_tool_call(
    fake_anthropic: FakeAnthropic, claude: AnthropicModel
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    answer = {"city": "Paris", "population": 2102650}
    fake_anthropic.script(anthropic_tool_use(OUTPUT_TOOL, answer, model=CLAUDE))
    completion = await claude.complete(
        ModelRequest([Message("user", "Largest city of France?")], json_schema=schema)
    )

    assert json.loads(completion.text) == answer
    [sent] = fake_anthropic.requests
    assert sent.body["tools"] == [
        {
            "name": OUTPUT_TOOL,
            "description": sent.body["tools"][0]["description"],
            "input_schema": schema,
        }
    ]
    assert sent.body["tool_choice"] == {"type": "tool", "name": OUTPUT_TOOL}


@workflow.defn(name="KeelTestSynthesizeOnce", sandboxed=False)
class SynthesizeOnce:
    """Runs the real `synthesize` activity with a fast retry policy: a retry that waits a
    second can only be waiting for the provider's Retry-After."""

    @workflow.run
    async def run(self, request: SynthesisRequest) -> Synthesis:
        return await workflow.execute_activity(
            "synthesize",
            request,
            result_type=Synthesis,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=100), maximum_attempts=3
            ),
        )


async def _synthesize_on_temporal(
    env: WorkflowEnvironment, model: AnthropicModel, task: str
) -> tuple[str, Synthesis]:
    queue = f"test-anthropic-{uuid.uuid4().hex[:8]}"
    router = ModelRouter({"planner": model, "reasoner": model})
    workflow_id = f"anthropic-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[SynthesizeOnce],
        activities=[ReasoningActivities(router).synthesize],
    ):
        result = await env.client.execute_workflow(
            SynthesizeOnce.run,
            SynthesisRequest(task=task, steps=[], max_usd=0.01),
            id=workflow_id,
            task_queue=queue,
            execution_timeout=timedelta(seconds=60),
        )
    return workflow_id, result


async def test_anthropic_rate_limit_is_retried_by_temporal_after_retry_after(
    temporal_env: WorkflowEnvironment, fake_anthropic: FakeAnthropic, claude: AnthropicModel
) -> None:
    fake_anthropic.script(
        anthropic_error(
            429, "rate_limit_error", "Number of requests exceeded", {"retry-after": "1"}
        ),
        anthropic_text("It is 42.", model=CLAUDE),
    )
    workflow_id, result = await _synthesize_on_temporal(temporal_env, claude, "What is 6*7?")

    assert result.answer == "It is 42."
    # Exactly two requests: the SDK did not retry on its own, Temporal did, once.
    first, second = fake_anthropic.requests
    assert second.at - first.at >= 1.0
    history = await temporal_env.client.get_workflow_handle(workflow_id).fetch_history()
    [started] = [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert started.attempt == 2
    assert started.last_failure.application_failure_info.type == MODEL_RATE_LIMITED


async def test_anthropic_bad_key_fails_at_once(
    temporal_env: WorkflowEnvironment, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(anthropic_text("never sent", model=CLAUDE))
    model = AnthropicModel(CLAUDE, api_key="wrong", base_url=fake_anthropic.base_url)
    with pytest.raises(WorkflowFailureError) as raised:
        await _synthesize_on_temporal(temporal_env, model, "What is 6*7?")
    await model.aclose()

    activity_error = raised.value.cause
    assert isinstance(activity_error, ActivityError)
    cause = activity_error.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == MODEL_AUTH_ERROR and cause.non_retryable
    assert "invalid x-api-key" in cause.message and "KEEL_ANTHROPIC_API_KEY" in cause.message
    assert "\n" not in cause.message
    assert len(fake_anthropic.requests) == 1
