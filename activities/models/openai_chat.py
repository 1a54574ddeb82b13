"""OpenAI chat completions, and any OpenAI-compatible server (`KEEL_OPENAI_BASE_URL`).

Structured output: a JSON schema goes out as `response_format`. OpenAI, vLLM, llama.cpp's
`llama-server`, Ollama and LM Studio take the standard
`{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`. llama-cpp-python's
server (`python -m llama_cpp.server`) only knows `"text"` and `"json_object"`: it rejects
`json_schema` (HTTP 500, "Input should be 'text' or 'json_object'") and takes the schema as
`{"type": "json_object", "schema": {...}}`, which it compiles to a decoding grammar. No one
payload works for both (OpenAI refuses the extra `schema` key), so `structured_output="auto"`
sends the standard form and, when a server answers that it only knows `json_object`, switches
this client to the llama-cpp-python form for good.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import openai
import structlog

from activities.models.base import Completion, Message, ModelClient, ModelRequest
from activities.models.provider_errors import (
    missing_key_error,
    provider_message,
    sdk_error,
)
from keel.errors import ModelRefused

log = structlog.get_logger(__name__)

KEY_ENV = "KEEL_OPENAI_API_KEY (or OPENAI_API_KEY)"
BASE_URL_ENV = "KEEL_OPENAI_BASE_URL"
# Compatible servers usually need no key, but the SDK insists on one.
PLACEHOLDER_KEY = "not-needed"
DEFAULT_TIMEOUT_S = 120.0  # below the model activities' start-to-close timeout

StructuredOutput = Literal["auto", "json_schema", "json_object"]

# Keywords OpenAI's strict mode does not accept (it then refuses the whole request).
_NOT_STRICT = frozenset(
    {"allOf", "not", "if", "then", "else", "dependentRequired", "patternProperties", "oneOf"}
)


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict structured outputs accept this schema: every object closed
    (`additionalProperties: false`) with all its properties required, no unsupported keywords.
    Strict mode guarantees the output matches; other schemas still go out, non-strict."""
    if isinstance(schema, list):
        return all(strict_compatible(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if _NOT_STRICT & schema.keys():
        return False
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required", [])) != set(properties):
            return False
    return all(
        strict_compatible(v)
        for k, v in schema.items()
        if k not in ("enum", "const", "default", "examples", "required")
    )


def estimate_tokens(messages: list[Message]) -> int:
    """A conservative count without the provider's tokenizer: about 3 UTF-8 bytes per token
    (real text averages nearer 4 in English, so this overestimates), plus each message's
    framing. Used only to cap spend before a call; usage comes from the provider after."""
    total = 3  # the reply's priming tokens
    for m in messages:
        total += math.ceil(len(m.content.encode()) / 3) + 5
    return total


class OpenAIModel(ModelClient):
    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        structured_output: StructuredOutput = "auto",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not api_key:
            if base_url is None:
                raise missing_key_error("OpenAI", KEY_ENV, BASE_URL_ENV)
            api_key = PLACEHOLDER_KEY
        self.name = model
        self.base_url = base_url
        self._official = base_url is None or "api.openai.com" in base_url
        self.structured_output: StructuredOutput = structured_output
        # Temporal retries (activity retry policy, Retry-After honoured): never the SDK.
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s
        )

    def count_tokens(self, messages: list[Message]) -> int:
        return estimate_tokens(messages)

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.structured_output == "json_object":
            return {"type": "json_object", "schema": schema}
        return {
            "type": "json_schema",
            "json_schema": {
                "name": "output",
                "schema": schema,
                "strict": strict_compatible(schema),
            },
        }

    async def complete(self, request: ModelRequest) -> Completion:
        kwargs: dict[str, Any] = {
            "model": self.name,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
        }
        # OpenAI's own API replaced `max_tokens` (its reasoning models refuse it) with
        # `max_completion_tokens`; compatible servers still read `max_tokens` (llama-cpp-python
        # silently ignores the new name and would generate up to its context size).
        kwargs["max_completion_tokens" if self._official else "max_tokens"] = request.max_tokens
        schema = request.json_schema
        if schema is not None:
            kwargs["response_format"] = self._response_format(schema)
        started = time.perf_counter()
        try:
            response = await self._create(kwargs)
        except openai.APIStatusError as err:
            if schema is None or not self._falls_back(err):
                raise self._translate(err) from err
            kwargs["response_format"] = self._response_format(schema)
            started = time.perf_counter()  # the refused attempt is not this call's latency
            try:
                response = await self._create(kwargs)
            except openai.APIError as retry_err:
                raise self._translate(retry_err) from retry_err
        except openai.APIError as err:
            raise self._translate(err) from err
        latency = (time.perf_counter() - started) * 1000

        message = response.choices[0].message if response.choices else None
        text = (message.content if message else None) or ""
        refusal = getattr(message, "refusal", None)
        if not text and refusal:
            raise ModelRefused(
                f"openai model {self.name} declined: {provider_message(refusal, 'refused')}"
            ).to_application_error()
        usage = response.usage
        if usage is None:  # some compatible servers omit it; never book a call as free
            log.warning("no usage in the response; estimating it", model=self.name)
            input_tokens, output_tokens = estimate_tokens(request.messages), max(1, len(text) // 3)
        else:
            input_tokens, output_tokens = usage.prompt_tokens, usage.completion_tokens
        return Completion(
            text=text, input_tokens=input_tokens, output_tokens=output_tokens, latency_ms=latency
        )

    async def _create(self, kwargs: dict[str, Any]) -> Any:
        return await self._client.chat.completions.create(**kwargs)

    def _falls_back(self, err: openai.APIStatusError) -> bool:
        """In "auto" mode, switch to `json_object` + schema when the server says that is all it
        takes (llama-cpp-python answers with a validation error naming `json_object`)."""
        if self.structured_output != "auto" or self._official:
            return False
        said = f"{err.message} {err.body}"  # untruncated: the hint may be deep in the message
        if err.status_code not in (400, 422, 500) or "json_object" not in said:
            return False
        log.warning(
            "server does not take json_schema response formats; using json_object + schema",
            model=self.name,
            base_url=self.base_url,
        )
        self.structured_output = "json_object"
        return True

    def _translate(self, err: openai.APIError) -> Exception:
        return sdk_error(
            provider="openai",
            model=self.name,
            key_env=KEY_ENV,
            err=err,
            connection_errors=openai.APIConnectionError,
        )

    async def aclose(self) -> None:
        await self._client.close()
