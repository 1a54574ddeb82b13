"""Heartbeats for long activities: how Temporal learns in seconds that a worker died mid-call
(the heartbeat timeout passes, the activity is retried elsewhere) and how a worker learns
that its activity was cancelled (the answer to a heartbeat)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

from temporalio import activity

HEARTBEAT_S = 1.0  # at most this long between heartbeats (less with a short heartbeat timeout)
# Set inside a heartbeating block: a model call inside a tool (ask_reasoner) adds no beats.
_beating: ContextVar[bool] = ContextVar("keel_heartbeating", default=False)


def heartbeat_interval() -> float:
    """Seconds between the current activity's heartbeats: HEARTBEAT_S, or a third of its
    heartbeat timeout where that is shorter (so that two beats can be lost in a row)."""
    timeout = activity.info().heartbeat_timeout
    if timeout is None or timeout.total_seconds() <= 0:
        return HEARTBEAT_S
    return min(HEARTBEAT_S, timeout.total_seconds() / 3)


@asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat the current activity every `heartbeat_interval()` while the block runs;
    outside an activity (the MCP server, a benchmark), or inside another such block, the
    block just runs.

    The first beat comes one interval in, so a quick call sends none. A cancel request
    reaches the worker with a heartbeat's answer; the worker then cancels the activity's
    task, which is the block's task: the block sees CancelledError at its `await`."""
    if not activity.in_activity() or _beating.get():
        yield
        return
    interval = heartbeat_interval()

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat()

    beats = asyncio.create_task(beat(), name="heartbeat")
    token = _beating.set(True)
    try:
        yield
    finally:
        _beating.reset(token)
        beats.cancel()
        await asyncio.wait([beats])
