"""The planner model served by Triton Inference Server (KServe v2 protocol over HTTP).

The model (`workers/triton/model_repository/planner`) takes one BYTES tensor holding a JSON
request {messages, max_tokens, json_schema, temperature} and returns one holding
{text, input_tokens, output_tokens, compute_ms}. It serves the same GGUF as `LlamaCppModel`,
so the name and price are the same, and tokens are counted locally with that GGUF's own
tokenizer and chat template (vocabulary only: no weights are loaded in this process).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from temporalio.exceptions import ApplicationError
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.http.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from activities.models.base import Completion, Message, ModelClient, ModelRequest
from activities.models.gguf_tokens import gguf_tokenizer
from activities.models.llamacpp import SMOLLM2_NAME, default_model_path
from keel.errors import ModelBadRequest, ModelUnavailable

# Generous: on a busy CPU-only server a plan waits behind others; Temporal's activity
# timeout is what really bounds the call.
REQUEST_TIMEOUT_S = 600.0


class TritonModel(ModelClient):
    """`url` is host:port or http(s)://host:port; `model` the name in Triton's repository;
    `model_path` the GGUF the server serves (for its name, price and token counts).

    Without a URL the model still has its name, price and token counts but cannot be called
    until `attach`ed: a process that never plans (`keel worker llm`) needs no planner server,
    and the planner worker attaches the server it starts."""

    needs_demonstrations = True

    def __init__(
        self, url: str | None, model: str = "planner", model_path: Path | None = None
    ) -> None:
        self.url: str | None = None
        self.ssl = False
        if url is not None:
            self.attach(url)
        self.model = model
        self.path = model_path or default_model_path()
        self.name = SMOLLM2_NAME if model_path is None else self.path.stem.lower()
        self._tokens = gguf_tokenizer(str(self.path))

    def attach(self, url: str) -> None:
        self.ssl = url.startswith("https://")
        self.url = url.removeprefix("https://").removeprefix("http://").rstrip("/")

    def count_tokens(self, messages: list[Message]) -> int:
        return self._tokens.count(messages)

    async def complete(self, request: ModelRequest) -> Completion:
        if self.url is None:
            raise ModelUnavailable(
                "no Triton server to call: set KEEL_TRITON_URL, or run the planner worker in "
                "this process (it starts one)",
                non_retryable=True,
            ).to_application_error()
        body = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "json_schema": request.json_schema,
            "temperature": request.temperature,
        }
        tensor = InferInput("REQUEST", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([json.dumps(body).encode()], dtype=np.object_))
        output = InferRequestedOutput("RESPONSE", binary_data=True)
        started = time.perf_counter()
        try:
            # A client per call: an aiohttp session belongs to one event loop, and no idle
            # keep-alive connection is left to hold up Triton's shutdown. Its cost (~1 ms)
            # is nothing next to a completion's.
            async with InferenceServerClient(
                self.url, conn_timeout=REQUEST_TIMEOUT_S, ssl=self.ssl
            ) as client:
                result = await client.infer(self.model, [tensor], outputs=[output])
        except InferenceServerException as err:
            raise self._model_error(err) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise ModelUnavailable(
                f"Triton at {self.url} is unreachable ({type(err).__name__}: {err}): "
                "is the planner worker's Triton server running? (KEEL_TRITON_URL)"
            ).to_application_error() from None
        round_trip_ms = (time.perf_counter() - started) * 1000
        raw = result.as_numpy("RESPONSE")
        if raw is None or raw.size != 1:
            raise ModelUnavailable(
                f"Triton model {self.model!r} returned no RESPONSE"
            ).to_application_error()
        out: dict[str, Any] = json.loads(raw.reshape(-1)[0])
        return Completion(
            text=out["text"],
            input_tokens=out["input_tokens"],
            output_tokens=out["output_tokens"],
            # The time a model instance worked on this call (what GPU time is billed by), as
            # LlamaCppModel measures it; waiting in Triton's queue is not billed.
            latency_ms=float(out.get("compute_ms", round_trip_ms)),
        )

    def _model_error(self, err: InferenceServerException) -> ApplicationError:
        status = err.status() or ""
        message = err.message() or str(err)
        if status in ("400", "404"):  # a bad request or an unknown model: retrying won't help
            hint = " (check KEEL_TRITON_MODEL)" if "unknown model" in message else ""
            return ModelBadRequest(
                f"Triton model {self.model!r} at {self.url} refused the request: {message}{hint}"
            ).to_application_error()
        # 5xx: the model raised, or its stub process died; Triton restarts it, so retry.
        return ModelUnavailable(
            f"Triton model {self.model!r} at {self.url} failed (HTTP {status}): {message}"
        ).to_application_error()
