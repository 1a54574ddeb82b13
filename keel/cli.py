"""The `keel` command line: run tasks, watch them, run the workers and the dev stack."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from keel import logging as keel_logging
from keel.client import TemporalUnreachable, connect, memorize, start_task
from keel.contracts import (
    Budget,
    Document,
    MemorizeRequest,
    TaskProgress,
    TaskRequest,
    TaskResult,
    TaskStatus,
)
from keel.converter import describe_validation_error
from keel.errors import ServiceStartError
from keel.queues import Queues
from keel.settings import Settings, SettingsError, get_settings

DEFAULT_TASK = (
    "Compute 17*7*24 (the hours in 17 weeks) and say what handbook.md says about deployments."
)
POLL_S = 0.3
POLLER_FRESH_S = 90


class UsageError(Exception):
    """Bad input on the command line: one line saying what is wrong and what to do."""


def _out(text: str = "") -> None:
    print(text, flush=True)


# --- the embedded stack ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _stack(settings: Settings, quiet: bool) -> AsyncIterator[Client]:
    """A client for the configured server; with default settings and no server reachable,
    an embedded dev server for the duration. Workers run in-process when none poll."""
    from temporal.devserver import DevServer
    from workers.process import build_workers, run_workers

    server = None
    try:
        client = await connect(settings)
    except TemporalUnreachable:
        if not settings.uses_embedded_temporal:
            raise
        if not quiet:
            _out(
                f"No Temporal server at {settings.temporal_address}: starting an embedded dev "
                f"server for this run (data in {settings.temporal_db})"
            )
        server = DevServer(settings.temporal_db).start()
        client = await connect(settings)
    stop = asyncio.Event()
    runner = None
    try:
        queues = Queues(settings.queue_prefix)
        if not await _has_pollers(client, queues.agent):
            from workers.components import Components

            settings.home.mkdir(parents=True, exist_ok=True)
            log_path = settings.home / "worker.log"
            keel_logging.configure(settings.log_level, open(log_path, "a"))  # noqa: SIM115
            if not quiet:
                _out(
                    f"No Keel workers on {queues.agent}: running them in this process "
                    f"(logs in {log_path})"
                )
            workers = await build_workers(client, Components.from_settings(settings))
            runner = asyncio.create_task(run_workers(workers, stop))
        yield client
    finally:
        stop.set()
        if runner:
            await runner
        if server:
            server.stop()


async def _has_pollers(client: Client, queue: str) -> bool:
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    # A dead worker stays listed for minutes; a live one polls again within about a minute.
    now = time.time()
    return any(now - p.last_access_time.ToSeconds() < POLLER_FRESH_S for p in described.pollers)


# --- keel run ----------------------------------------------------------------------------


async def _follow(handle: WorkflowHandle[Any, TaskResult], show: bool) -> TaskResult:
    result_task = asyncio.ensure_future(handle.result())
    printed = 0
    while True:
        done, _ = await asyncio.wait({result_task}, timeout=POLL_S)
        if show:
            with contextlib.suppress(Exception):  # a query can race the workflow's start
                progress = await handle.query("status", result_type=TaskProgress)
                first_new = max(0, len(progress.events) - (progress.events_total - printed))
                for event in progress.events[first_new:]:
                    _out(f"  · {event}")
                printed = progress.events_total
        if done:
            return result_task.result()


def _print_result(result: TaskResult, settings: Settings) -> None:
    _out()
    _out(f"Status: {result.status.value}")
    _out("Answer:")
    _out("  " + (result.answer or "(none)").replace("\n", "\n  "))
    _out()
    _out("Ledger:")
    _out(f"  {'kind':6} {'name':24} {'role':9} {'step':6} {'tokens':>8} {'usd':>11} {'ms':>8}")
    for e in result.ledger.entries:
        _out(
            f"  {e.kind:6} {e.name[:24]:24} {e.role:9} {e.step_id or '':6} "
            f"{e.input_tokens + e.output_tokens:>8} {e.usd:>11.6f} {e.latency_ms:>8.0f}"
            + ("" if e.ok else "  failed")
        )
    _out(
        f"  total ${result.ledger.total_usd:.6f} of ${result.ledger.budget_usd:g} budget, "
        f"{result.ledger.total_tokens} tokens, {result.llm_calls} model calls, "
        f"{result.replans} re-plans"
    )
    _out()
    _out(f"Workflow id: {result.workflow_id}")
    _out(f"Temporal UI: {settings.ui_link(result.workflow_id)}")


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        request = TaskRequest(
            task=args.task,
            user_id=args.user,
            budget=Budget(usd=args.budget, tokens=args.max_tokens),
            max_replans=args.max_replans,
            strategy=args.strategy,
        )
    except ValidationError as err:
        raise UsageError(describe_validation_error(err, "task")) from None
    async with _stack(settings, quiet=args.json) as client:
        handle = await start_task(client, request, queues=Queues(settings.queue_prefix))
        if not args.json:
            _out(f"Started task {handle.id}: {request.task}")
        try:
            result = await _follow(handle, show=not args.json)
        except WorkflowFailureError as err:
            raise UsageError(f"task {handle.id} failed: {err.cause or err}") from None
    if args.json:
        _out(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        _print_result(result, settings)
        if settings.uses_embedded_temporal:
            _out(
                "Inspect it later: `make dev` (or `keel dev`), then open the UI link or run "
                f"`.venv/bin/temporal workflow show -w {result.workflow_id}`"
            )
    return 0 if result.status == TaskStatus.COMPLETED else 3


# --- keel memorize ------------------------------------------------------------------------


MAX_DOCUMENT_BYTES = 1_000_000


def _read_document(path: str) -> Document:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}; give a readable text file") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise UsageError(f"{path} is over {MAX_DOCUMENT_BYTES:,} bytes: split it into parts")
    try:
        return Document(source=path, text=data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: memorize text files only") from None


async def cmd_memorize(args: argparse.Namespace, settings: Settings) -> int:
    documents = [_read_document(path) for path in args.files]  # all read before any is sent
    try:
        request = MemorizeRequest(user_id=args.user, documents=documents)
    except ValidationError as err:
        raise UsageError(describe_validation_error(err, "memorize request")) from None
    async with _stack(settings, quiet=False) as client:
        handle = await memorize(client, request, queues=Queues(settings.queue_prefix))
        _out(f"Memorizing {len(documents)} document(s) for user {args.user} ({handle.id})")
        try:
            done = await handle.result()
        except WorkflowFailureError as err:
            raise UsageError(f"memorizing failed: {err.cause or err}") from None
    for source, count in done.chunks.items():
        _out(f"  {source}: {count} passages")
    return 0


# --- keel status -------------------------------------------------------------------------


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect(settings)
    handle = client.get_workflow_handle(args.workflow_id, result_type=TaskResult)
    try:
        description = await handle.describe()
    except Exception as err:  # RPCError NOT_FOUND and friends
        raise UsageError(
            f"no task {args.workflow_id!r} on {settings.temporal_address}: {err}"
        ) from None
    _out(f"Workflow {args.workflow_id}: {description.status.name if description.status else '?'}")
    progress = await handle.query("status", result_type=TaskProgress)
    _out(
        f"Status: {progress.status.value}; steps done {progress.steps_done}; "
        f"re-plans {progress.replans}; spent ${progress.total_usd:.6f}"
    )
    for event in progress.events:
        _out(f"  · {event}")
    if progress.status.is_final:
        _print_result(await handle.result(), settings)
    return 0


# --- keel dev / keel worker --------------------------------------------------------------


async def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from temporal.devserver import DevServer, port_open
    from temporal.search_attributes import ensure_registered
    from workers.components import Components
    from workers.process import BUILDERS, build_workers, run_workers, stop_on_signals

    keel_logging.configure(settings.log_level)
    server = None
    host, _, port = settings.temporal_address.rpartition(":")
    if settings.uses_embedded_temporal and not port_open(host, int(port)):
        server = DevServer(settings.temporal_db).start()
        _out(f"Temporal dev server on {server.address}, data in {settings.temporal_db}")
        _out(f"Web UI: {settings.temporal_ui_url}")
    try:
        client = await connect(settings)
        added = await ensure_registered(client)
        if added:
            _out(f"Registered search attributes: {', '.join(added)}")
        components = Components.from_settings(settings)
        workers = await build_workers(client, components, args.workers or tuple(BUILDERS))
        if components.mcp_tools:
            _out(f"Tools of external MCP servers: {', '.join(components.mcp_tools)}")
        _out(f"Workers running on {', '.join(w.task_queue for w in workers)}. Ctrl-C stops.")
        await run_workers(workers, stop_on_signals())
    finally:
        if server:
            server.stop()
    return 0


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.components import Components
    from workers.process import build_workers, run_workers, stop_on_signals

    keel_logging.configure(settings.log_level)
    client = await connect(settings)
    workers = await build_workers(client, Components.from_settings(settings), args.names)
    await run_workers(workers, stop_on_signals())
    return 0


# --- keel mcp ------------------------------------------------------------------------------

MCP_HELP = """Serve Keel's tools to any MCP client, over stdio (the default: the client starts
`keel mcp` as a subprocess) or over streamable HTTP at http://HOST:PORT/mcp.

Every tool of the registry is offered with its input and output schemas and its
annotations; each call runs through the same validation, cost check and output
cap as a tool activity, and a refusal comes back as a tool error. Tools that
need a person's approval are refused. Files are a private copy of KEEL_DOCS_DIR
per MCP session, under KEEL_HOME/workspaces, removed when the server stops.
Temporal is not needed.

Example client entry (stdio):
  {"command": "keel", "args": ["mcp"], "env": {"KEEL_HOME": "/path/to/.keel"}}
"""


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--http {value!r}: give HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    from keel.mcp_server import build_server

    if args.max_usd_per_call < 0:
        raise UsageError("--max-usd-per-call must be 0 or more")
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UsageError(f"--token-env {args.token_env}: that variable is unset or empty")
    host, port = _host_port(args.http) if args.http else ("", 0)
    if args.http is None and token is not None:
        raise UsageError("--token-env protects --http; a stdio server has no network side")
    if args.http and token is None and not _is_loopback(host):
        raise UsageError(
            f"refusing to serve tools on {host} without a token: put one in an environment "
            "variable and pass --token-env NAME, or bind a loopback address"
        )
    # logs on stderr: on stdio, stdout carries the protocol
    keel_logging.configure(settings.log_level)
    server = build_server(settings, models=args.models, max_usd_per_call=args.max_usd_per_call)
    if args.http is None:
        await server.run_stdio()
        return 0
    shown = f"[{host}]" if ":" in host else host
    _out(
        f"Keel MCP server on http://{shown}:{port}/mcp with {len(server.tools)} tools "
        f"({', '.join(server.tools)}). Ctrl-C stops."
    )
    await server.run_http(host, port, token)
    return 0


# --- entry point -------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keel", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an agent task and print its answer and ledger")
    run.add_argument("task", nargs="?", default=DEFAULT_TASK, help="what the agent should do")
    run.add_argument("--budget", type=float, default=0.05, help="USD cap (default 0.05)")
    run.add_argument("--max-tokens", type=int, default=None, help="token cap (default none)")
    run.add_argument("--user", default="anonymous", help="user id the task runs for")
    run.add_argument("--max-replans", type=int, default=2, help="re-plans allowed (default 2)")
    run.add_argument(
        "--strategy",
        choices=["plan", "react"],
        default="plan",
        help="plan: one model call plans the whole graph (default); "
        "react: the naive one-call-per-step loop, for comparison",
    )
    run.add_argument("--json", action="store_true", help="print the TaskResult as JSON")
    run.set_defaults(handler=cmd_run)

    mem = sub.add_parser("memorize", help="put text files into a user's long-term memory")
    mem.add_argument("files", nargs="+", help="UTF-8 text files (up to 1 MB each)")
    mem.add_argument("--user", default="anonymous", help="whose memory (default anonymous)")
    mem.set_defaults(handler=cmd_memorize)

    status = sub.add_parser("status", help="show a task's status, events and result")
    status.add_argument("workflow_id")
    status.set_defaults(handler=cmd_status)

    dev = sub.add_parser("dev", help="run a Temporal dev server and every worker in one process")
    dev.add_argument("workers", nargs="*", help="only these workers (default all)")
    dev.set_defaults(handler=cmd_dev)

    mcp = sub.add_parser(
        "mcp",
        help="serve Keel's tools to MCP clients (stdio, or streamable HTTP with --http)",
        description=MCP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mcp.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio "
        "(a non-loopback HOST needs --token-env)",
    )
    mcp.add_argument(
        "--token-env",
        metavar="VAR",
        default=None,
        help="with --http: require `Authorization: Bearer <token>`, the token read from "
        "environment variable VAR",
    )
    mcp.add_argument(
        "--max-usd-per-call",
        type=float,
        default=0.0,
        metavar="USD",
        help="what one call may cost (default 0: paid tools are refused)",
    )
    mcp.add_argument(
        "--models",
        action="store_true",
        help="also serve tools that call models (ask_reasoner), through the KEEL_*_MODEL "
        "router; loads or calls those models",
    )
    mcp.set_defaults(handler=cmd_mcp)

    from workers.process import BUILDERS

    worker = sub.add_parser("worker", help="run the workers of one or more task queues")
    worker.add_argument("names", nargs="+", choices=sorted(BUILDERS))
    worker.set_defaults(handler=cmd_worker)
    return p


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C so an embedded dev server is stopped, not orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        settings = get_settings()
        return asyncio.run(args.handler(args, settings))
    except (UsageError, SettingsError, TemporalUnreachable, ServiceStartError) as err:
        print(f"keel: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
