"""`run_python`: a Python program in the sandbox (no network, no host files, hard limits).

The program's failure is the tool's result, not the tool's failure: a traceback, a non-zero
exit or a limit hit comes back as output for the planner to read. Only a sandbox that cannot
run at all (bwrap missing, misconfigured) fails the call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import BaseModel, Field

from activities.tools.registry import ToolContext
from keel.settings import Settings
from sandbox import Limits, Run, SandboxBackend, SandboxError, build_backend, limits_from

MAIN = "main.py"
MAX_CODE = 64 * 1024


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
        try:
            backend = self.backend()
        except SandboxError as err:
            raise ValueError(str(err)) from None
        run = Run(
            argv=[str(self.settings.sandbox_python), "-E", "-s", MAIN],
            files={MAIN: args.code.encode()},
            stdin=args.stdin.encode(),
            limits=self.limits,
        )
        result = await asyncio.to_thread(backend.run, run)
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
