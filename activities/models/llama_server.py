"""The local GGUF model in a child process: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server`), supervised by the worker that uses it.

llama.cpp is native code: a crash in it (a CPU it was not built for, a bad model file) must
cost one retried activity, never the worker. So the model never runs in the worker's own
interpreter: this child does the decoding, bound to the worker's life (keel/_lifeline.py),
on a free loopback port behind a random API key. When it dies, the call in flight fails with
one line naming how it died; the next call starts a fresh child.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import structlog

from keel._lifeline import bound_to_this_process
from keel._local_server import stop_process
from keel._ports import LOCALHOST, free_port
from keel.errors import ServiceStartError

log = structlog.get_logger(__name__)

READY_TIMEOUT_S = 120.0  # a 1.5B model loads in seconds; a cold page cache takes longer
READY_POLL_S = 0.1
N_CTX = 4096


def how_it_ended(returncode: int) -> str:
    """'was killed by SIGSEGV' / 'exited with code 1'."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class LlamaServer:
    """One child process serving `model_path` under the name `alias`. `ensure_running()`
    starts it, or starts a new one when the last has died, and returns once it answers."""

    def __init__(
        self,
        model_path: Path,
        alias: str,
        threads: int,
        log_path: Path,
        api_key: str | None = None,
    ) -> None:
        self.model_path, self.alias, self.threads = model_path, alias, threads
        self.log_path = log_path
        # Random unless given: other local users cannot spend this worker's CPU.
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.port = 0
        self.starts = 0  # how many children have been started (restarts = starts - 1)
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ended(self) -> str | None:
        """How the current child ended, or None while it runs (or before the first)."""
        if self._process is None or self._process.poll() is None:
            return None
        return how_it_ended(self._process.returncode)

    async def ended_after_failure(self, grace_s: float = 1.0) -> str | None:
        """After a failed call: whether the child died (it may take a moment to be reaped)."""
        deadline = time.monotonic() + grace_s
        while (why := self.ended()) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return why

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", self.alias,
            "--host", LOCALHOST,
            "--port", str(self.port),
            "--n_ctx", str(N_CTX),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--verbose", "False",
        ]  # fmt: skip

    def _spawn(self) -> None:
        from llama_cpp.server.settings import Settings as ServerSettings

        # Its settings also read same-named environment variables (PORT, API_KEY, MODEL...):
        # leave those out so that only the flags configure it.
        fields = {name.upper() for name in ServerSettings.model_fields}
        env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
        env["API_KEY"] = self.api_key  # not a flag: the command line is visible to `ps`
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._process = subprocess.Popen(
                bound_to_this_process(self._command()),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.starts += 1
        self._ready = False
        log.info(
            "local model process started",
            model=self.alias,
            pid=self._process.pid,
            port=self.port,
            start=self.starts,
        )

    def _start_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()  # a lock belongs to one event loop
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def ensure_running(self) -> None:
        async with self._start_lock():  # concurrent calls share one start
            running = self._process is not None and self._process.poll() is None
            if running and self._ready:
                return
            if not running:
                if self._process is not None:
                    log.warning(
                        "local model process ended; starting a new one",
                        model=self.alias,
                        how=self.ended(),
                    )
                self._spawn()
            await self._wait_ready()

    async def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise ServiceStartError(
                        f"the local model server {how_it_ended(self._process.returncode)} "
                        f"while loading {self.model_path.name}: see {self.log_path}"
                    )
                try:
                    response = await http.get(f"{self.base_url}/models", headers=headers)
                    if response.status_code == 200:
                        self._ready = True
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                await asyncio.sleep(READY_POLL_S)
        self.stop()
        raise ServiceStartError(
            f"the local model server did not answer within {READY_TIMEOUT_S:.0f} s: "
            f"see {self.log_path}"
        )

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, 10)
        self._ready = False
