"""Anthropic's Messages API (`KEEL_ANTHROPIC_BASE_URL` for a gateway or a compatible server).

A JSON schema is enforced with a forced tool call: the schema is the input schema of one
tool, `tool_choice` makes the model call it, and the tool's input is the answer. This works
on every Claude model (the newer `output_config.format` does not) and the API validates the
input against the schema.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic

from activities.models.base import Completion, Message, ModelClient, ModelRequest
from activities.models.openai_chat import estimate_tokens
from activities.models.provider_errors import (
    missing_key_error,
    sdk_error,
)
from keel.errors import ModelRefused

KEY_ENV = "KEEL_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY)"
BASE_URL_ENV = "KEEL_ANTHROPIC_BASE_URL"
PLACEHOLDER_KEY = "not-needed"
DEFAULT_TIMEOUT_S = 120.0  # below the model activities' start-to-close timeout

OUTPUT_TOOL = "respond"
_WRAPPED = "value"  # tool inputs must be objects; any other schema is wrapped in one


class AnthropicModel(ModelClient):
    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not api_key:
            if base_url is None:
                raise missing_key_error("Anthropic", KEY_ENV, BASE_URL_ENV)
            api_key = PLACEHOLDER_KEY
        self.name = model
        # An explicit key also stops the SDK from looking for profiles and federation files.
        # Temporal retries (activity retry policy, Retry-After honoured): never the SDK.
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s
        )

    def count_tokens(self, messages: list[Message]) -> int:
        """Conservative estimate (see `estimate_tokens`): the exact count is an API call,
        too slow to make before every call just to cap its spend."""
        return estimate_tokens(messages)

    async def complete(self, request: ModelRequest) -> Completion:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        kwargs: dict[str, Any] = {
            "model": self.name,
            "max_tokens": request.max_tokens,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role != "system"
            ],
        }
        # The 2.x SDK no longer takes `temperature`: the model's own sampling applies.
        if system:
            kwargs["system"] = system
        schema = request.json_schema
        wrapped = schema is not None and schema.get("type") != "object"
        if schema is not None:
            input_schema = (
                {"type": "object", "properties": {_WRAPPED: schema}, "required": [_WRAPPED]}
                if wrapped
                else schema
            )
            kwargs["tools"] = [
                {
                    "name": OUTPUT_TOOL,
                    "description": "Give the answer. Its input is the whole answer.",
                    "input_schema": input_schema,
                }
            ]
            kwargs["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL}

        started = time.perf_counter()
        try:
            message = await self._client.messages.create(**kwargs)
        except anthropic.APIError as err:
            raise sdk_error(
                provider="anthropic",
                model=self.name,
                key_env=KEY_ENV,
                err=err,
                connection_errors=anthropic.APIConnectionError,
            ) from err
        latency = (time.perf_counter() - started) * 1000

        text = "".join(b.text for b in message.content if b.type == "text")
        if message.stop_reason == "refusal":
            raise ModelRefused(
                f"anthropic model {self.name} declined to answer: {text[:200]}"
            ).to_application_error()
        if schema is not None:
            tool_input = next((b.input for b in message.content if b.type == "tool_use"), None)
            if tool_input is not None:
                if wrapped and isinstance(tool_input, dict):
                    tool_input = tool_input.get(_WRAPPED)
                text = json.dumps(tool_input)
            # Without a tool call (cut off by max_tokens) the prose goes back as it is: the
            # caller validates the output and handles an invalid one (replan, escalation).
        usage = message.usage
        # Cached prompt tokens are counted apart from `input_tokens`; all of them were read.
        input_tokens = (
            usage.input_tokens
            + (usage.cache_creation_input_tokens or 0)
            + (usage.cache_read_input_tokens or 0)
        )
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=usage.output_tokens,
            latency_ms=latency,
        )

    async def aclose(self) -> None:
        await self._client.close()
