"""What a sandbox run asks for and what it reports, and the interface every backend meets.

`bwrap` (sandbox/bwrap.py) is the backend here; a microVM backend (Firecracker, gVisor) for
production implements the same `SandboxBackend.run` and reports the same `SandboxResult`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, Field

from keel.errors import KeelError


class SandboxError(KeelError, RuntimeError):
    """The sandbox itself could not run (missing binary, bad configuration): not the code's
    fault, so a tool retries or reports it as an outage."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # killed when it runs longer, whatever it is doing
    cpu_s: int = 5  # RLIMIT_CPU: SIGXCPU at the limit, SIGKILL a second later
    memory_mb: int = 512  # RLIMIT_AS of every process; the run's cgroup, where there is one,
    # caps all its memory at this plus its three tmpfs
    disk_mb: int = 64  # size of the writable workdir (and of /tmp), a tmpfs each
    file_mb: int = 32  # RLIMIT_FSIZE: the largest file it may write
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 64  # RLIMIT_NPROC of the run's own uid
    output_bytes: int = 64 * 1024  # stdout and stderr each; more is cut and the run killed

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "disk_mb", "file_mb", "open_files"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox limit {name} must be positive")
        if self.processes < 4:  # bwrap itself needs a reaper and the child
            raise ValueError("sandbox limit processes must be at least 4")


class StopReason(StrEnum):
    EXITED = "exited"  # the program ended by itself (any exit code)
    WALL_TIME = "wall_time"
    CPU_TIME = "cpu_time"
    MEMORY = "memory"
    OUTPUT_LIMIT = "output_limit"
    SIGNAL = "signal"  # killed by a signal it did not ask for
    CANCELLED = "cancelled"  # killed because its caller cancelled the run


class SandboxResult(BaseModel):
    stdout: str
    stderr: str
    exit_code: int | None = Field(description="None when the sandbox killed it")
    stopped: StopReason
    signal: int | None = None
    wall_ms: float
    cpu_ms: float = Field(description="user + system CPU of the processes it waited for")
    max_rss_kb: int
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    backend: str
    cgroup: bool = Field(default=False, description="whether a cgroup bounded the whole run")

    @property
    def ok(self) -> bool:
        return self.stopped is StopReason.EXITED and self.exit_code == 0

    def describe(self) -> str:
        """One line for logs and tool errors."""
        if self.stopped is StopReason.EXITED:
            how = f"exited with code {self.exit_code}"
        elif self.stopped is StopReason.SIGNAL:
            how = f"killed by signal {self.signal}"
        elif self.stopped is StopReason.CANCELLED:
            how = "cancelled"
        else:
            how = f"stopped: {self.stopped.value} limit"
        return f"{how} after {self.wall_ms:.0f} ms wall, {self.cpu_ms:.0f} ms CPU"


@dataclass(frozen=True)
class Run:
    """One sandboxed run: an argv inside the sandbox, files placed in its workdir."""

    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # workdir-relative path -> content
    stdin: bytes = b""
    limits: Limits = Limits()
    env: dict[str, str] = field(default_factory=dict)  # added to the sandbox's clean env


class SandboxBackend(Protocol):
    name: str

    def run(self, run: Run, cancel: threading.Event | None = None) -> SandboxResult:
        """Run to completion or to a limit; blocking (call from a thread in async code).

        Setting `cancel` (from any thread) stops the run within a fraction of a second:
        every process of it is killed before `run` returns, and the result says
        `cancelled`. A `cancel` already set when the run starts stops it at once."""
        ...
