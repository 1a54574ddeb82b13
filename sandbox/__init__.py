"""Isolation runtime for tools that run code: a backend interface and its bwrap backend."""

from __future__ import annotations

from pathlib import Path

from keel.settings import Settings
from sandbox.backend import Limits, Run, SandboxBackend, SandboxError, SandboxResult, StopReason

__all__ = [
    "Limits",
    "Run",
    "SandboxBackend",
    "SandboxError",
    "SandboxResult",
    "StopReason",
    "build_backend",
    "limits_from",
]


def limits_from(settings: Settings) -> Limits:
    return Limits(
        wall_s=settings.sandbox_wall_s,
        cpu_s=settings.sandbox_cpu_s,
        memory_mb=settings.sandbox_memory_mb,
        disk_mb=settings.sandbox_disk_mb,
        file_mb=min(32, settings.sandbox_disk_mb),
        processes=settings.sandbox_processes,
        output_bytes=settings.sandbox_output_bytes,
    )


def build_backend(settings: Settings) -> SandboxBackend:
    if settings.sandbox_backend != "bwrap":
        raise SandboxError(
            f"KEEL_SANDBOX_BACKEND={settings.sandbox_backend!r} is not available here; "
            "the backends are: bwrap"
        )
    from sandbox.bwrap import BwrapBackend

    # the interpreter's installation must be visible inside; /usr always is
    prefix = settings.sandbox_python.resolve().parent.parent
    extra = () if prefix == Path("/usr") or Path("/usr") in prefix.parents else (prefix,)
    return BwrapBackend(uid_base=settings.sandbox_uid, read_only=extra)
