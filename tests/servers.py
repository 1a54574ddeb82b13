"""Real local endpoints for the hosted-model backends' tests (llama-cpp-python's own
OpenAI-compatible server is activities/models/llama_server.py):

- `FakeAnthropic`: an HTTP server that answers `/v1/messages` with scripted replies in the
  Anthropic Messages API wire format (messages, tool calls, errors with their status codes
  and headers) and records every request it gets.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

READY_TIMEOUT_S = 120.0


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]


def anthropic_message(
    content: list[dict[str, Any]],
    *,
    model: str,
    stop_reason: str = "end_turn",
    input_tokens: int = 20,
    output_tokens: int = 10,
) -> Reply:
    return Reply(
        200,
        {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
    )


def anthropic_text(
    text: str, *, model: str, input_tokens: int = 20, output_tokens: int = 10
) -> Reply:
    return anthropic_message(
        [{"type": "text", "text": text}],
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def anthropic_tool_use(name: str, tool_input: dict[str, Any], *, model: str) -> Reply:
    block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name}
    return anthropic_message([{**block, "input": tool_input}], model=model, stop_reason="tool_use")


def anthropic_error(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> Reply:
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }
    return Reply(status, body, headers or {})


class FakeAnthropic:
    """Answers each POST /v1/messages with the next scripted `Reply`, in order, once the
    request carries `api_key` (as `x-api-key` or as a bearer token: SDK versions differ)."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.replies: deque[Reply] = deque()
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                reply = fake._take(
                    Received(
                        time.monotonic(),
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", str(reply.body.get("request_id", "req_fake")))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean; `requests` records everything

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _take(self, received: Received) -> Reply:
        with self._lock:
            self.requests.append(received)
            keys = {
                received.headers.get("x-api-key"),
                received.headers.get("authorization", "").removeprefix("Bearer "),
            }
            if self.api_key not in keys:
                return anthropic_error(401, "authentication_error", "invalid x-api-key")
            if received.path != "/v1/messages":
                return anthropic_error(404, "not_found_error", f"no route {received.path}")
            if not self.replies:
                return anthropic_error(500, "api_error", "the test scripted no reply")
            return self.replies.popleft()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.clear()
            self.requests.clear()
            self.replies.extend(replies)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
