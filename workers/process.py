"""Running workers as a process: connect, serve until SIGINT/SIGTERM, shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence

from temporalio.client import Client
from temporalio.worker import Worker

from keel import _logging as keel_logging
from keel._lifeline import SHUTDOWN_GRACE_S, leave_within
from keel.client import TemporalUnreachable, connect
from keel.errors import ServiceStartError
from keel.settings import SettingsError, get_settings
from workers import NAMES, agent, llm, memory, planner, tools
from workers.components import Components

# A builder makes the workers of one component: one worker, or several (the tools
# component adds a rate-limited worker per allowlisted HTTP API).
Builder = Callable[[Client, Components], Worker | Sequence[Worker]]

BUILDERS: dict[str, Builder] = {
    "agent": agent.build,
    "planner": planner.build,
    "llm": llm.build,
    "tools": tools.build,
    "memory": memory.build,
}
assert tuple(BUILDERS) == NAMES


def build_all(
    client: Client, components: Components, names: Sequence[str] = tuple(BUILDERS)
) -> list[Worker]:
    return [w for name in names for w in _as_list(BUILDERS[name](client, components))]


async def build_workers(
    client: Client, components: Components, names: Sequence[str] = tuple(BUILDERS)
) -> list[Worker]:
    """build_all, after asking the external MCP servers (KEEL_MCP_SERVERS) for their tools
    when the tool worker is among `names` (it serves them) or the planner (it offers them)."""
    if "tools" in names or "planner" in names:
        await components.load_mcp_tools()
    return build_all(client, components, names)


def _as_list(built: Worker | Sequence[Worker]) -> list[Worker]:
    return [built] if isinstance(built, Worker) else list(built)


async def run_workers(workers: Sequence[Worker], stop: asyncio.Event) -> None:
    """Run until `stop` is set or a worker dies, then shut every worker down gracefully."""
    running = [asyncio.create_task(w.run()) for w in workers]
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopped, *running], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        # shutdown() returns once a worker has drained; run() returns after the worker's
        # plugins have finished too (the planner stops its Triton server there).
        await asyncio.gather(*running, return_exceptions=True)
        for task in running:  # surface a worker's crash instead of hiding it
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def workers_running(workers: Sequence[Worker]) -> AsyncIterator[None]:
    """The workers run in the background for the duration of the block; leaving it shuts
    them down gracefully (and raises a worker's crash)."""
    stop = asyncio.Event()
    runner = asyncio.create_task(run_workers(workers, stop))
    try:
        yield
    finally:
        stop.set()
        await runner


def stop_on_signals(drain_s: float = 0.0) -> asyncio.Event:
    """Set on SIGINT or SIGTERM: the workers drain (running activities get `drain_s`) and
    stop; should that take longer than `drain_s` + SHUTDOWN_GRACE_S (or a second signal
    come), the process ends there and then."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def asked(sig: signal.Signals) -> None:
        leave_within(drain_s + SHUTDOWN_GRACE_S, 128 + sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, asked, sig)
    return stop


async def serve_async(names: Sequence[str]) -> None:
    settings = get_settings()
    keel_logging.configure(settings.log_level)
    client = await connect(settings)
    components = Components.from_settings(settings)
    workers = await build_workers(client, components, names)
    try:
        await run_workers(workers, stop_on_signals(settings.worker_drain_s))
    finally:
        components.close_memory()


def serve(*names: str) -> None:
    """Serve the named workers (workers.NAMES) until SIGINT or SIGTERM."""
    try:
        asyncio.run(serve_async(names))
    except (TemporalUnreachable, SettingsError, ServiceStartError) as err:  # Triton, MCP, ...
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
