"""Real local endpoints for the hosted-model backends' tests.

- `LlamaCppServer`: llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`)
  serving SmolLM2 as a subprocess, ready once `/v1/models` answers.
- `FakeAnthropic`: an HTTP server that answers `/v1/messages` with scripted replies in the
  Anthropic Messages API wire format (messages, tool calls, errors with their status codes
  and headers) and records every request it gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from keel.ports import free_port
from workers.lifeline import bound_to_this_process
from workers.service import stop_process

READY_TIMEOUT_S = 120.0


class LlamaCppServer:
    """`python -m llama_cpp.server` on a free local port, with an API key (so that auth
    errors can be tested against it) and the model served under `alias`.

    One thread by default: llama.cpp's threads spin-wait for each other, so with as many
    threads as cores a busy machine (tests running beside it) slows it from seconds to
    minutes; one thread is barely slower for a 135M model and degrades gracefully.
    """

    def __init__(
        self, model_path: Path, alias: str, api_key: str, log_path: Path, threads: int = 1
    ) -> None:
        self.alias, self.api_key, self.log_path = alias, api_key, log_path
        self.threads = threads
        self.port = free_port()
        self._model_path = model_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        from llama_cpp.server.settings import Settings as ServerSettings

        # Its settings also read same-named environment variables (PORT, API_KEY, MODEL...):
        # leave those out so that only the flags below configure it.
        fields = {name.upper() for name in ServerSettings.model_fields}
        env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self._model_path),
            "--model_alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "4096",
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
            "--api_key",
            self.api_key,
            "--verbose",
            "False",
        ]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                bound_to_this_process(command), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {self._proc.returncode}:\n{self._log_tail()}"
                )
            try:
                if self.get("/models")["data"][0]["id"] == self.alias:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass  # not listening yet
            time.sleep(0.1)  # poll interval while the model loads
        self.stop()
        raise TimeoutError(f"llama_cpp.server not ready in {READY_TIMEOUT_S}s:\n{self._log_tail()}")

    def get(self, path: str) -> Any:
        return self._call(urllib.request.Request(self.base_url + path))

    def post(self, path: str, payload: dict[str, Any], root: bool = False) -> Any:
        base = self.base_url.removesuffix("/v1") if root else self.base_url
        request = urllib.request.Request(
            base + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> Any:
        request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 10)


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
