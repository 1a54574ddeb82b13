"""Bounded thread pools, one per kind of blocking work, so one kind cannot starve another.

With one shared pool (asyncio's default, which `to_thread` uses), 16 sandboxed programs
sleeping in one user's task held every thread and another user's memory recall waited
14 s behind them. Sandbox runs and memory calls each get their own pool, sized from
settings (`KEEL_SANDBOX_THREADS`, `KEEL_MEMORY_THREADS`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

SANDBOX = "sandbox"
MEMORY = "memory"

_pools: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def pool(kind: str, threads: int) -> ThreadPoolExecutor:
    """The process's pool for `kind`, made with `threads` threads on first use (a worker
    process sizes it once from its settings)."""
    with _lock:
        if kind not in _pools:
            _pools[kind] = ThreadPoolExecutor(threads, thread_name_prefix=f"keel-{kind}")
        return _pools[kind]


async def run_in(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` on `executor`, with the caller's context variables (as `to_thread`)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)
