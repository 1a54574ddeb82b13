"""`run_python`: a Python program in the sandbox (no network, no host files, hard limits).

The program's failure is the tool's result, not the tool's failure: a traceback, a non-zero
exit or a limit hit comes back as output for the planner to read. Only a sandbox that cannot
run at all (bwrap missing, misconfigured) fails the call.

Cancelling the call (the activity's task, when its workflow cancels it) cancels the run: the
sandbox kills it, and the call ends, re-raising the cancellation, only once every process of
the run is gone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, Field

from activities.tools.registry import ToolContext
from keel._pools import SANDBOX, pool, run_in
from keel.settings import Settings
from sandbox import Limits, Run, SandboxBackend, build_backend, limits_from

MAIN = "main.py"
MAX_CODE = 64 * 1024
T = TypeVar("T")


class RunPythonInput(BaseModel):
    code: str = Field(
        min_length=1, max_length=MAX_CODE, description="a Python 3 program; print the results"
    )
    stdin: str = Field(default="", max_length=MAX_CODE, description="text on standard input")


class RunPythonOutput(BaseModel):
    stdout: str
    stderr: str
    exit_code: int | None
    stopped: str = Field(description="exited, or the limit that stopped it")
    wall_ms: float
    cpu_ms: float
    text: str


@dataclass
class RunPython:
    """The tool's function; the backend is built on first use, so a registry can be listed
    (by the planner, by MCP clients) on a machine without bubblewrap."""

    settings: Settings
    _backend: SandboxBackend | None = None

    @property
    def limits(self) -> Limits:
        return limits_from(self.settings)

    def backend(self) -> SandboxBackend:
        if self._backend is None:
            self._backend = build_backend(self.settings)
        return self._backend

    async def __call__(self, args: RunPythonInput, ctx: ToolContext) -> RunPythonOutput:
        # A sandbox that cannot run (SandboxError) is an outage of this worker, not the
        # program's fault: it fails the call, retried, perhaps on a worker that can run it.
        backend = self.backend()
        run = Run(
            argv=[str(self.settings.sandbox_python), "-E", "-s", MAIN],
            files={MAIN: args.code.encode()},
            stdin=args.stdin.encode(),
            limits=self.limits,
        )
        threads = pool(SANDBOX, self.settings.sandbox_threads)
        result = await in_thread_cancellable(lambda cancel: backend.run(run, cancel), threads)
        text = result.stdout.strip() or result.stderr.strip()[-500:]
        return RunPythonOutput(
            stdout=result.stdout,
            stderr=result.stderr,
            exit_code=result.exit_code,
            stopped=result.stopped.value,
            wall_ms=round(result.wall_ms, 1),
            cpu_ms=round(result.cpu_ms, 1),
            text=text if result.ok else f"{result.describe()}: {text}",
        )


async def in_thread_cancellable(
    fn: Callable[[threading.Event], T], executor: ThreadPoolExecutor
) -> T:
    """`fn(cancel)` in a thread of `executor`.
    Cancelling the awaiting task sets `cancel` and waits for `fn` to return (it must stop
    promptly once `cancel` is set) before re-raising the cancellation: nothing `fn` started
    is still running when the caller moves on. A thread cannot be stopped from outside,
    which is why plain `asyncio.to_thread` would leave it."""
    cancel = threading.Event()
    thread = asyncio.ensure_future(run_in(executor, fn, cancel))
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        cancel.set()
        while not thread.done():
            try:
                await asyncio.wait([thread])
            except asyncio.CancelledError:  # cancelled again: the thread still has to end
                continue
        if not thread.cancelled():
            thread.exception()  # retrieved: an error after cancelling is not reported
        raise
