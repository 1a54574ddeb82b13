"""The `keel` command line: run tasks, watch them, run the workers and the dev stack."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import ValidationError
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.service import RPCError, RPCStatusCode

from keel import _logging as keel_logging
from keel import _report as report
from keel import _search_attributes as sa
from keel import durable
from keel._converter import describe_validation_error
from keel._identity import OPERATOR, USER, Credential, IdentityError, issue, parse_identity_keys
from keel._lifeline import SHUTDOWN_GRACE_S, leave_within
from keel._ports import is_loopback, split_host_port
from keel._queues import Queues
from keel._stalls import STALL_AFTER_S, last_poll_s, stalls, unanswered
from keel._terminal import terminal_safe
from keel.client import (
    TemporalUnreachable,
    WatchRefused,
    connect,
    connect_when_serving,
    memorize,
    start_task,
    until_serving,
    watch_task,
)
from keel.contracts import (
    Approval,
    Budget,
    Document,
    HumanAnswer,
    HumanPolicy,
    MemorizeRequest,
    PendingKind,
    PendingRequest,
    Rejection,
    TaskProgress,
    TaskRequest,
    TaskResult,
    TaskStatus,
    checked_user_id,
)
from keel.errors import KeelError, ServiceStartError
from keel.settings import Settings, SettingsError, get_settings
from workers import NAMES

T = TypeVar("T")

DEFAULT_TASK = (
    "Compute 17*7*24 (the hours in 17 weeks) and say what handbook.md says about deployments."
)
POLL_S = 0.3
STALL_TICK_S = 1.0  # `keel run` checks for work no worker takes (at most every STALL_CHECK_S)
LAST_EVENTS_WAIT_S = 5.0
POLLER_FRESH_S = 90
STALL_CHECK_S = 2.0  # how often a waiting command asks what no worker is taking
QUERY_TIMEOUT = timedelta(seconds=STALL_AFTER_S)  # a query no worker answers fails by then
STATUS_QUERY_WAIT_S = 20.0  # `keel status` of a running task with no worker: gives up then


class UsageError(KeelError):
    """Bad input on the command line: one line saying what is wrong and what to do."""


def _out(text: str = "") -> None:
    print(terminal_safe(text), flush=True)


# --- the embedded stack ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _stack(settings: Settings, quiet: bool) -> AsyncIterator[Client]:
    """A client for the configured server; with default settings and no server reachable,
    an embedded dev server for the duration. Workers run in-process when none poll."""
    from temporal.devserver import DevServer
    from workers.process import build_workers, run_workers

    server = None
    if settings.uses_embedded_temporal:
        _refuse_leftover_server(settings)
    try:
        client = await connect(settings)
        await until_serving(client)
    except TemporalUnreachable:
        if not settings.uses_embedded_temporal:
            raise
        if not quiet:
            _out(
                f"No Temporal server at {settings.temporal_address}: starting an embedded dev "
                f"server for this run (data in {settings.temporal_db})"
            )
        server = DevServer.embedded(settings).start()
        client = await connect_when_serving(settings)
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


def _refuse_leftover_server(settings: Settings) -> None:
    from temporal.devserver import leftover_dev_server

    _, _, port = settings.temporal_address.rpartition(":")
    problem = leftover_dev_server(int(port), settings.temporal_db)
    if problem:
        raise UsageError(problem)


async def _has_pollers(client: Client, queue: str) -> bool:
    # A dead worker stays listed for minutes; a live one polls again within about a minute.
    last = await last_poll_s(client, queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
    return last is not None and last < POLLER_FRESH_S


# --- keel run ----------------------------------------------------------------------------


def _waiting_line(workflow_id: str, pending: PendingRequest) -> str:
    """What a task waits for, and the command that gives it."""
    escalated = " (escalated)" if pending.escalated else ""
    if pending.kind == PendingKind.APPROVAL:
        return (
            f"waiting for approval of {pending.id}: {pending.text}{escalated} — approve with: "
            f"keel approve {workflow_id} {pending.id} "
            f"(or: keel reject {workflow_id} {pending.id} --reason TEXT)"
        )
    return (
        f"waiting for an answer to {pending.id}: {pending.text}{escalated} — answer with: "
        f"keel answer {workflow_id} TEXT --question {pending.id}"
    )


async def _pending(handle: WorkflowHandle[Any, Any]) -> list[PendingRequest]:
    return await handle.query(durable.QUERY_PENDING, result_type=list[PendingRequest])


class _StallWatch:
    """Tells the user, once per queue, what a task waits on that no worker takes."""

    def __init__(self, client: Client, workflow_id: str, to_stderr: bool) -> None:
        self.client, self.workflow_id, self.to_stderr = client, workflow_id, to_stderr
        self._next = time.monotonic() + STALL_CHECK_S
        self._told: set[tuple[str, str]] = set()

    async def check(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + STALL_CHECK_S
        try:
            found = await stalls(self.client, self.workflow_id)
        except RPCError:
            return  # the next check asks again
        for stall in found:
            if (stall.queue, stall.what) not in self._told:
                self._told.add((stall.queue, stall.what))
                print(
                    terminal_safe(f"  ⚠ {stall.line()}"),
                    file=sys.stderr if self.to_stderr else sys.stdout,
                )


def _gave_up(workflow_id: str, timeout_s: float) -> UsageError:
    return UsageError(
        f"stopped waiting after {timeout_s:g} s (--timeout); task {workflow_id} goes on where "
        f"workers serve it: `keel status {workflow_id}` shows it"
    )


async def _print_events(client: Client, handle: WorkflowHandle[Any, TaskResult]) -> None:
    """Print the task's events as it pushes them (the `watch` Update), and what it waits
    for a person to decide, until it ends."""
    shown: set[tuple[str, datetime]] = set()  # waits already announced (id, asked at)
    printed = 0
    try:
        async for progress in watch_task(client, handle.id):
            first_new = max(0, len(progress.events) - (progress.events_total - printed))
            for event in progress.events[first_new:]:
                _out(f"  · {event}")
            printed = progress.events_total
            if progress.status.is_waiting:
                with contextlib.suppress(RPCError):  # it may have moved on meanwhile
                    for pending in await _pending(handle):
                        if (pending.id, pending.asked_at) not in shown:
                            shown.add((pending.id, pending.asked_at))
                            _out(f"  ⏸ {_waiting_line(handle.id, pending)}")
    except WatchRefused as err:
        _out(f"  (no live events: {err}; `keel status {handle.id}` shows them)")


async def _follow(
    client: Client,
    handle: WorkflowHandle[Any, TaskResult],
    show: bool,
    watch: _StallWatch,
    timeout_s: float | None = None,
) -> TaskResult:
    result_task = asyncio.ensure_future(handle.result())
    # not shown (--json): a printer that is done at once
    events = asyncio.ensure_future(_print_events(client, handle) if show else asyncio.sleep(0))
    started = time.monotonic()
    try:
        while True:
            waiting = {result_task} if events.done() else {result_task, events}
            done, _ = await asyncio.wait(waiting, timeout=STALL_TICK_S)
            if events in done and (failed := events.exception()) is not None:
                raise failed
            if result_task in done:
                # the last events (its end) come with the result: print them first
                await asyncio.wait({events}, timeout=LAST_EVENTS_WAIT_S)
                return result_task.result()
            await watch.check()
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise _gave_up(handle.id, timeout_s)
    finally:
        result_task.cancel()
        events.cancel()


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


_POLICY_FLAGS = {
    "approve_plans_above_usd": "--approve-above",
    "wait_timeout_s": "--wait-timeout",
    "on_timeout": "--on-timeout",
    "questions": "--questions",
}


def _human_policy(args: argparse.Namespace) -> HumanPolicy:
    """The --approve-above / --wait-timeout / --on-timeout flags; unset ones keep defaults.
    HumanPolicy's own bounds check them; a refusal names the flag."""
    given = {
        "approve_plans_above_usd": args.approve_above,
        "wait_timeout_s": args.wait_timeout,
        "on_timeout": args.on_timeout,
        "questions": args.questions or None,
    }
    try:
        return HumanPolicy.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        flag = _POLICY_FLAGS[str(first["loc"][0])]
        raise UsageError(f"{flag} {first['input']!r}: {first['msg']}") from None


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    timeout_s = _timeout(args)
    try:
        request = TaskRequest(
            task=args.task,
            # no --user: the task is the signed-in caller's (start_task), else anonymous
            **({} if args.user is None else {"user_id": args.user}),
            budget=Budget(usd=args.budget, tokens=args.max_tokens),
            max_replans=args.max_replans,
            strategy=args.strategy,
            human=_human_policy(args),
        )
    except ValidationError as err:
        raise UsageError(describe_validation_error(err, "task")) from None
    async with _stack(settings, quiet=args.json) as client:
        handle = await start_task(client, request, queues=Queues(settings.queue_prefix))
        if not args.json:
            _out(f"Started task {handle.id}: {request.task}")
        try:
            watch = _StallWatch(client, handle.id, to_stderr=args.json)
            result = await _follow(client, handle, not args.json, watch, timeout_s)
        except WorkflowFailureError as err:
            if isinstance(err.cause, TemporalCancelledError):
                progress = await handle.query(durable.QUERY_STATUS, result_type=TaskProgress)
                if args.json:
                    ended = {"workflow_id": handle.id, "status": progress.status.value}
                    _out(json.dumps({**ended, "total_usd": progress.total_usd}, indent=2))
                else:
                    _out(f"Task {handle.id} was cancelled; spent ${progress.total_usd:.6f}")
                return 3
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
        request = MemorizeRequest(user_id=_user(args.user, settings), documents=documents)
    except ValidationError as err:
        raise UsageError(describe_validation_error(err, "memorize request")) from None
    async with _stack(settings, quiet=False) as client:
        handle = await memorize(client, request, queues=Queues(settings.queue_prefix))
        _out(f"Memorizing {len(documents)} document(s) for user {request.user_id} ({handle.id})")
        try:
            done = await handle.result()
        except WorkflowFailureError as err:
            raise UsageError(f"memorizing failed: {err.cause or err}") from None
    for source, count in done.chunks.items():
        _out(f"  {source}: {count} passages")
    return 0


# --- who is asking (keel/_identity.py) ---------------------------------------------------


def _caller(settings: Settings) -> Credential | None:
    return Credential.parse(settings.credential) if settings.credential else None


def _user(flag: str | None, settings: Settings) -> str:
    """The user a task or memory is for: --user, else the credential's, else anonymous."""
    if flag is not None:
        return flag
    caller = _caller(settings)
    return caller.user if caller else "anonymous"


def _refuse_others_task(description: WorkflowExecutionDescription, settings: Settings) -> None:
    """A signed-in user sees and cancels their own tasks; an operator anyone's. (The workers
    refuse the queries too; this also covers what the server keeps after a task ends.)"""
    caller = _caller(settings)
    if caller is not None and not caller.may_act_for(
        description.typed_search_attributes.get(sa.USER)
    ):
        raise UsageError(
            f"task {description.id!r} is not yours: you are signed in as {caller.user!r} "
            "(KEEL_CREDENTIAL); an operator's credential sees every task"
        )


async def cmd_credential(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.identity_keys:
        raise UsageError(
            "KEEL_IDENTITY_KEYS is not set: credentials are made from the workers' identity "
            "key (README: Security)"
        )
    try:
        checked_user_id(args.user)
    except ValueError as err:
        raise UsageError(f"user {args.user!r}: {err}") from None
    role = OPERATOR if args.operator else USER
    credential = issue(parse_identity_keys(settings.identity_keys), args.user, role)
    print(credential.encode())  # the secret itself: not through _out's log-safe path
    print(
        f"# give it to {args.user!r} as KEEL_CREDENTIAL ({role}); keep it secret",
        file=sys.stderr,
    )
    return 0


# --- keel status -------------------------------------------------------------------------


async def _describe(
    handle: WorkflowHandle[Any, TaskResult], settings: Settings
) -> WorkflowExecutionDescription:
    try:
        return await handle.describe()
    except Exception as err:  # RPCError NOT_FOUND and friends
        raise UsageError(f"no task {handle.id!r} on {settings.temporal_address}: {err}") from None


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    timeout_s = _timeout(args) or STATUS_QUERY_WAIT_S
    client = await connect(settings)
    handle = client.get_workflow_handle(args.workflow_id, result_type=TaskResult)
    description = await _describe(handle, settings)
    _refuse_others_task(description, settings)
    running = description.status == WorkflowExecutionStatus.RUNNING
    _out(f"Workflow {args.workflow_id}: {description.status.name if description.status else '?'}")
    try:  # the task's worker answers the query: say so within seconds when none does
        progress = await _await_answered(
            client,
            args.workflow_id,
            handle.query(
                durable.QUERY_STATUS,
                result_type=TaskProgress,
                rpc_timeout=timedelta(seconds=timeout_s),
            ),
            timeout_s,
        )
    except (RPCError, UsageError) as err:
        if running:
            message = err.message if isinstance(err, RPCError) else str(err)
            raise UsageError(f"task {args.workflow_id} did not answer: {message}") from None
        progress = None  # an ended task's result is kept by the server: show that
    if progress is not None:
        _out(
            f"Status: {progress.status.value}; steps done {progress.steps_done}; "
            f"re-plans {progress.replans}; spent ${progress.total_usd:.6f}"
        )
        for event in progress.events:
            _out(f"  · {event}")
        if progress.status.is_waiting:
            for pending in await _pending(handle):
                _out(f"  ⏸ {_waiting_line(handle.id, pending)}")
    if not running:
        try:
            result = await handle.result()
        except WorkflowFailureError as err:  # cancelled: there is no TaskResult
            _out(f"No result: {err.cause or err}")
        else:
            _print_result(result, settings)
    return 0


async def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    timeout_s = _timeout(args)
    client = await connect(settings)
    handle = client.get_workflow_handle(args.workflow_id, result_type=TaskResult)
    _refuse_others_task(await _describe(handle, settings), settings)
    _out(f"Watching task {args.workflow_id} (Ctrl-C stops watching, not the task)")
    watch = _StallWatch(client, args.workflow_id, to_stderr=False)
    try:
        result = await _follow(client, handle, True, watch, timeout_s)
    except WorkflowFailureError as err:
        _out(f"Task {args.workflow_id} ended without a result: {err.cause or err}")
        return 3
    _print_result(result, settings)
    return 0


# --- keel report ----------------------------------------------------------------------


async def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    try:
        window = report.parse_since(args.since)
    except ValueError as err:
        raise UsageError(str(err)) from None
    user = _whose(args, settings)
    quoted = _visibility_string(user, "--user") if user is not None else None
    client = await connect(settings)
    with _visibility_errors(settings, "the tasks"):
        built = await report.build(client, window, user, quoted, args.limit)
    if args.json:
        print(built.model_dump_json(indent=2))
    else:
        for line in report.render(built):
            _out(line)
    return 0


# --- a person in the loop: keel pending / approve / reject / answer / cancel -------------


PENDING_QUERY_CONCURRENCY = 8


def _visibility_string(value: str, flag: str) -> str:
    if any(c in value for c in "\"\\'") or not value.isprintable():
        raise UsageError(
            f"{flag} {value!r}: quotes, backslashes and control characters cannot be searched for"
        )
    return f'"{value}"'


def _whose(args: argparse.Namespace, settings: Settings) -> str | None:
    """The user whose tasks a listing shows: --user, which a signed-in user may only set to
    themselves (their own tasks by default); an operator or an unsigned caller lists any."""
    if args.limit < 1:
        raise UsageError("--limit must be 1 or more")
    caller = _caller(settings)
    if caller is not None and caller.role != OPERATOR:
        if args.user is not None and not caller.may_act_for(args.user):
            raise UsageError(
                f"you are signed in as {caller.user!r} (KEEL_CREDENTIAL): only an operator "
                "lists other users' tasks"
            )
        return caller.user
    return cast(str | None, args.user)


@contextlib.contextmanager
def _visibility_errors(settings: Settings, what: str) -> Iterator[None]:
    """A listing the server refuses, in one line that says what to do."""
    try:
        yield
    except RPCError as err:
        if err.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in err.message:
            raise UsageError(
                f"{settings.temporal_address} does not know Keel's search attributes "
                f"({err.message}): `keel dev` registers them, or run the README's "
                "`temporal operator search-attribute create` commands"
            ) from None
        raise UsageError(f"cannot list {what}: {err.message}") from None


async def cmd_pending(args: argparse.Namespace, settings: Settings) -> int:
    args.user = _whose(args, settings)
    query = f'({sa.WAITING_QUERY}) AND ExecutionStatus = "Running"'
    if args.user is not None:
        query += f" AND {sa.USER.name} = {_visibility_string(args.user, '--user')}"
    client = await connect(settings)
    with _visibility_errors(settings, "the waiting tasks"):
        listed = [wf async for wf in client.list_workflows(query, limit=args.limit)]
    gate = asyncio.Semaphore(PENDING_QUERY_CONCURRENCY)

    async def waits_for(workflow_id: str) -> list[PendingRequest] | str:
        async with gate:
            try:
                return await _pending(client.get_workflow_handle(workflow_id))
            except Exception as err:  # a task closing meanwhile, no worker to answer, ...
                return f"(cannot ask it: {str(err).splitlines()[0] if str(err) else err!r})"

    answers = await asyncio.gather(*(waits_for(wf.id) for wf in listed))
    shown = 0
    for wf, pending in zip(listed, answers, strict=True):
        if isinstance(pending, list) and not pending:
            continue  # it moved on after visibility listed it
        attrs = wf.typed_search_attributes
        cost = attrs.get(sa.COST_USD) or 0.0
        if isinstance(pending, str):
            waits = pending
        else:
            waits = "; ".join(
                f"{p.kind.value} {p.id}: {p.text}" + (" (escalated)" if p.escalated else "")
                for p in pending
            )
        _out(
            f"{wf.id}  user {attrs.get(sa.USER) or '?'}  {attrs.get(sa.STATUS) or '?'}  "
            f"${cost:.6f}  {waits}"
        )
        shown += 1
    whose = f" of user {args.user}" if args.user is not None else ""
    if not shown:
        _out(f"No task{whose} is waiting for a person.")
        return 0
    if len(listed) == args.limit:
        _out(f"(listed at most {args.limit} tasks; there may be more: raise --limit)")
    _out(
        "Decide with: keel approve ID STEP | keel reject ID STEP --reason TEXT | "
        "keel answer ID TEXT [--question STEP]"
    )
    return 0


async def _await_answered(
    client: Client, workflow_id: str, call: Awaitable[T], timeout_s: float | None
) -> T:
    """`call` (an Update or a query to a task), saying after a few seconds when no worker
    answers it, and giving up after `timeout_s` when one is set."""
    task = asyncio.ensure_future(call)
    started = time.monotonic()
    told = False
    while True:
        done, _ = await asyncio.wait({task}, timeout=POLL_S)
        if done:
            return task.result()
        waited = time.monotonic() - started
        if not told and waited >= STALL_AFTER_S:
            told = True
            with contextlib.suppress(RPCError):
                stall = await unanswered(client, workflow_id, waited)
                print(terminal_safe(f"  ⚠ {stall.line()}"), file=sys.stderr, flush=True)
        if timeout_s is not None and waited > timeout_s:
            task.cancel()
            raise UsageError(
                f"no answer from task {workflow_id} within {timeout_s:g} s (--timeout); the "
                f"request may still reach it once its worker runs: `keel status {workflow_id}` "
                "shows it"
            )


def _timeout(args: argparse.Namespace) -> float | None:
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout!r}: give a number of seconds above 0")
    return cast(float | None, args.timeout)


async def _update(
    settings: Settings, workflow_id: str, name: str, arg: Any, timeout_s: float | None
) -> int:
    """Send a person's decision; a refusal by the task's validator is one line, exit 2."""
    client = await connect(settings)
    handle = client.get_workflow_handle(workflow_id)
    try:
        done = await _await_answered(
            client, workflow_id, handle.execute_update(name, arg, result_type=str), timeout_s
        )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        raise UsageError(
            cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        ) from None
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise UsageError(f"cannot {name} in task {workflow_id!r}: {err.message}") from None
        try:
            ended = (await handle.describe()).status
        except RPCError:
            raise UsageError(
                f"no task {workflow_id!r} on {settings.temporal_address}; "
                "`keel pending` lists the tasks waiting for a person"
            ) from None
        raise UsageError(
            f"task {workflow_id!r} has already ended ({ended.name if ended else '?'}): "
            "it waits for no decision"
        ) from None
    _out(f"{workflow_id}: {done}")
    return 0


def _decision(model: type[Approval | Rejection | HumanAnswer], what: str, **fields: Any) -> Any:
    try:
        return model(**fields)
    except ValidationError as err:
        raise UsageError(describe_validation_error(err, what)) from None


async def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    approval = _decision(Approval, "approval", step_id=args.step, by=args.by)
    return await _update(
        settings, args.workflow_id, durable.UPDATE_APPROVE, approval, _timeout(args)
    )


async def cmd_reject(args: argparse.Namespace, settings: Settings) -> int:
    rejection = _decision(Rejection, "rejection", step_id=args.step, reason=args.reason, by=args.by)
    return await _update(
        settings, args.workflow_id, durable.UPDATE_REJECT, rejection, _timeout(args)
    )


async def cmd_answer(args: argparse.Namespace, settings: Settings) -> int:
    answer = _decision(HumanAnswer, "answer", text=args.text, question_id=args.question, by=args.by)
    return await _update(settings, args.workflow_id, durable.UPDATE_ANSWER, answer, _timeout(args))


async def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect(settings)
    handle = client.get_workflow_handle(args.workflow_id, result_type=TaskResult)
    description = await _describe(handle, settings)
    _refuse_others_task(description, settings)
    if description.status != WorkflowExecutionStatus.RUNNING:
        state = description.status.name if description.status else "?"
        raise UsageError(
            f"task {args.workflow_id!r} has already ended ({state}): nothing to cancel"
        )
    try:
        await handle.cancel()
    except RPCError as err:  # it ended between the two calls
        raise UsageError(f"cannot cancel task {args.workflow_id!r}: {err.message}") from None
    if args.no_wait:
        _out(
            f"Cancellation of {args.workflow_id} requested; `keel status {args.workflow_id}` "
            "shows when it has stopped"
        )
        return 0
    _out(f"Cancelling {args.workflow_id}: waiting for its in-flight work to stop")
    with contextlib.suppress(WorkflowFailureError):  # a cancelled task has no result
        await handle.result()
    described = await handle.describe()
    progress = await handle.query(durable.QUERY_STATUS, result_type=TaskProgress)
    _out(
        f"Task {args.workflow_id}: {progress.status.value} "
        f"(Temporal: {described.status.name if described.status else '?'}); "
        f"spent ${progress.total_usd:.6f}"
    )
    return 0 if progress.status == TaskStatus.CANCELLED else 3


# --- keel dev / keel worker --------------------------------------------------------------


async def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    unknown = [name for name in args.workers if name not in NAMES]
    if unknown:
        raise UsageError(f"no worker named {', '.join(unknown)}; the workers: {', '.join(NAMES)}")
    from temporal.devserver import DevServer, port_open
    from temporal.search_attributes import ensure_registered
    from workers.components import Components
    from workers.process import build_workers, run_workers, stop_on_signals

    keel_logging.configure(settings.log_level)
    server = None
    host, _, port = settings.temporal_address.rpartition(":")
    if settings.uses_embedded_temporal:
        _refuse_leftover_server(settings)
    if settings.uses_embedded_temporal and not port_open(host, int(port)):
        server = DevServer.embedded(settings).start()
        _out(f"Temporal dev server on {server.address}, data in {settings.temporal_db}")
        _out(f"Web UI: {settings.temporal_ui_url}")
    try:
        if server:
            client = await connect_when_serving(settings)
        else:
            client = await connect(settings)
            await until_serving(client)
        added = await ensure_registered(client)
        if added:
            _out(f"Registered search attributes: {', '.join(added)}")
        components = Components.from_settings(settings)
        workers = await build_workers(client, components, args.workers or NAMES)
        if components.mcp_tools:
            _out(f"Tools of external MCP servers: {', '.join(components.mcp_tools)}")
        _out(f"Workers running on {', '.join(w.task_queue for w in workers)}. Ctrl-C stops.")
        await run_workers(workers, stop_on_signals(settings.worker_drain_s))
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
    await run_workers(workers, stop_on_signals(settings.worker_drain_s))
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
    try:
        return split_host_port(value)
    except ValueError as err:
        raise UsageError(f"--http {value!r}: {err}") from None


def _server_token(args: argparse.Namespace, host: str, serves: str) -> str | None:
    """The bearer token an HTTP server Keel runs requires (read from --token-env), or None
    with --no-auth on a loopback address; `serves` says what it gives whoever connects."""
    if args.token_env and args.no_auth:
        raise UsageError("give --token-env or --no-auth, not both")
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UsageError(f"--token-env {args.token_env}: that variable is unset or empty")
        return token
    if not args.no_auth:
        raise UsageError(
            f"{serves}: put a token in an environment variable and "
            "pass --token-env NAME (clients send `Authorization: Bearer <token>`), or pass "
            "--no-auth on a loopback address"
        )
    if not is_loopback(host):
        raise UsageError(
            f"refusing to serve on {host} without a token: --no-auth is for a loopback "
            "address; pass --token-env NAME"
        )
    return None


async def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    from keel._mcp_server import build_server

    if args.max_usd_per_call < 0:
        raise UsageError("--max-usd-per-call must be 0 or more")
    if args.http is None:
        if args.token_env or args.no_auth:
            raise UsageError(
                "--token-env and --no-auth are for --http; a stdio server has no network side"
            )
        host, port, token = "", 0, None
    else:
        host, port = _host_port(args.http)
        token = _server_token(args, host, "--http serves Keel's tools to anyone who can connect")
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
    _Stop.cancels = False  # uvicorn stops on SIGINT/SIGTERM by itself, requests drained
    await server.run_http(host, port, token)
    return 0


# --- keel codec-server ---------------------------------------------------------------------

CODEC_HELP = """Decrypt Keel's encrypted payloads (KEEL_ENCRYPTION_KEYS) for the Temporal Web UI
and the `temporal` CLI, over Temporal's codec-server protocol (POST /decode, /encode).

Web UI: Settings (the gear) > Codec Server, endpoint http://HOST:PORT; with a token,
turn on "Pass the user access token" only if your UI's login issues that token.
temporal CLI: temporal workflow show -w ID --codec-endpoint http://HOST:PORT
  --codec-auth "Bearer $TOKEN"
"""


async def cmd_codec_server(args: argparse.Namespace, settings: Settings) -> int:
    from keel._codec_server import codec_app
    from keel._encryption import AesGcmCodec, parse_keys

    if not settings.encryption_keys:
        raise UsageError(
            "KEEL_ENCRYPTION_KEYS is not set: there is nothing to decrypt; set the same keys "
            "as the workers"
        )
    host, port = _host_port(args.http)
    token = _server_token(
        args, host, "the codec server decrypts every task's data for anyone who can connect"
    )
    origins = args.ui_origin or [settings.temporal_ui_url.rstrip("/")]
    codec = AesGcmCodec(parse_keys(settings.encryption_keys))
    app = codec_app(codec, host=host, port=port, ui_origins=origins, token=token)
    import uvicorn

    _out(
        f"Keel codec server on http://{host}:{port} (key {codec.active} encrypts) for "
        f"{', '.join(origins)}. Ctrl-C stops."
    )
    _Stop.cancels = False  # uvicorn stops on SIGINT/SIGTERM by itself
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    await uvicorn.Server(config).serve()
    return 0


# --- entry point -------------------------------------------------------------------------


def _answer_timeout_flag(command: argparse.ArgumentParser, default: str) -> None:
    command.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up after this long when the task does not answer (exit 2); within seconds "
        f"it says when no worker answers. Default: {default}",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keel", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an agent task and print its answer and ledger")
    run.add_argument("task", nargs="?", default=DEFAULT_TASK, help="what the agent should do")
    run.add_argument("--budget", type=float, default=0.05, help="USD cap (default 0.05)")
    run.add_argument("--max-tokens", type=int, default=None, help="token cap (default none)")
    run.add_argument(
        "--user", default=None, help="user id the task runs for (default: KEEL_CREDENTIAL's user)"
    )
    run.add_argument("--max-replans", type=int, default=2, help="re-plans allowed (default 2)")
    run.add_argument(
        "--strategy",
        choices=["plan", "react"],
        default="plan",
        help="plan: one model call plans the whole graph (default); "
        "react: the naive one-call-per-step loop, for comparison",
    )
    run.add_argument("--json", action="store_true", help="print the TaskResult as JSON")
    run.add_argument(
        "--approve-above",
        type=float,
        default=None,
        metavar="USD",
        help="a plan expected to cost more than this waits for approval of step 'plan'",
    )
    run.add_argument(
        "--wait-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long one wait for a person may take (default 86400)",
    )
    run.add_argument(
        "--on-timeout",
        choices=["escalate", "fail"],
        default=None,
        help="when nobody decides in time: escalate (notify, keep waiting; the default) "
        "or fail (end as timed_out_waiting)",
    )
    run.add_argument(
        "--questions",
        action="store_true",
        help="someone will answer the task's questions (keel answer): the planner may ask "
        "(ask_human); without it no plan waits on a question",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop waiting after this long (exit 2); the task goes on where workers serve "
        "it. Without it keel run waits, saying within seconds when no worker takes its work",
    )
    run.set_defaults(handler=cmd_run)

    mem = sub.add_parser("memorize", help="put text files into a user's long-term memory")
    mem.add_argument("files", nargs="+", help="UTF-8 text files (up to 1 MB each)")
    mem.add_argument("--user", default=None, help="whose memory (default: KEEL_CREDENTIAL's user)")
    mem.set_defaults(handler=cmd_memorize)

    status = sub.add_parser("status", help="show a task's status, events and result")
    status.add_argument("workflow_id")
    _answer_timeout_flag(status, f"{STATUS_QUERY_WAIT_S:g} s")
    status.set_defaults(handler=cmd_status)

    watch = sub.add_parser(
        "watch", help="follow a task's events as they happen, then print its result"
    )
    watch.add_argument("workflow_id")
    watch.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop watching after this long (exit 2); the task goes on. Default: until it ends",
    )
    watch.set_defaults(handler=cmd_watch)

    pending = sub.add_parser("pending", help="list the tasks waiting for a person")
    pending.add_argument("--user", default=None, help="only this user's tasks")
    pending.add_argument("--limit", type=int, default=100, help="list at most this many (100)")
    pending.set_defaults(handler=cmd_pending)

    rep = sub.add_parser(
        "report",
        help="what tasks cost and how they went: cost per task, completion without a human, "
        "tool error rates, model spend, the most expensive tasks",
    )
    rep.add_argument(
        "--since", default="24h", help="tasks that ended this long ago or later (30m, 24h, 7d)"
    )
    rep.add_argument("--user", default=None, help="only this user's tasks")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.add_argument(
        "--limit", type=int, default=1000, help="read at most this many tasks, newest first (1000)"
    )
    rep.set_defaults(handler=cmd_report)

    approve = sub.add_parser("approve", help="approve a step (or 'plan') a task waits on")
    approve.add_argument("workflow_id")
    approve.add_argument("step", help="the step id, as `keel pending` shows it")
    approve.add_argument("--by", default="", help="who approves (kept in the task's history)")
    _answer_timeout_flag(approve, "wait until it answers")
    approve.set_defaults(handler=cmd_approve)

    reject = sub.add_parser("reject", help="reject a step (or 'plan'); the planner reads why")
    reject.add_argument("workflow_id")
    reject.add_argument("step", help="the step id, as `keel pending` shows it")
    reject.add_argument("--reason", required=True, help="why (the planner reads it)")
    reject.add_argument("--by", default="", help="who rejects")
    _answer_timeout_flag(reject, "wait until it answers")
    reject.set_defaults(handler=cmd_reject)

    answer = sub.add_parser("answer", help="answer a question a task asked")
    answer.add_argument("workflow_id")
    answer.add_argument("text", help="the answer")
    answer.add_argument(
        "--question", default=None, help="the question's step id (needed when several are open)"
    )
    answer.add_argument("--by", default="", help="who answers")
    _answer_timeout_flag(answer, "wait until it answers")
    answer.set_defaults(handler=cmd_answer)

    cancel = sub.add_parser("cancel", help="cancel a task: stop its in-flight work and end it")
    cancel.add_argument("workflow_id")
    cancel.add_argument(
        "--no-wait", action="store_true", help="only request it; do not wait for the task to end"
    )
    cancel.set_defaults(handler=cmd_cancel)

    cred = sub.add_parser(
        "credential", help="make a user's KEEL_CREDENTIAL from KEEL_IDENTITY_KEYS (operators)"
    )
    cred.add_argument("user", help="the user id it signs in as")
    cred.add_argument(
        "--operator", action="store_true", help="the operator role: acts for and sees every user"
    )
    cred.set_defaults(handler=cmd_credential)

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
        "(with --token-env, or --no-auth on a loopback HOST)",
    )
    mcp.add_argument(
        "--token-env",
        metavar="VAR",
        default=None,
        help="with --http: require `Authorization: Bearer <token>`, the token read from "
        "environment variable VAR (--http needs it, or --no-auth)",
    )
    mcp.add_argument(
        "--no-auth",
        action="store_true",
        help="with --http on a loopback address: serve without a token (anyone on this "
        "machine can call the tools)",
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

    codec = sub.add_parser(
        "codec-server",
        help="decrypt encrypted payloads for the Web UI and the temporal CLI",
        description=CODEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    codec.add_argument("--http", metavar="HOST:PORT", default="127.0.0.1:8081")
    codec.add_argument(
        "--token-env",
        metavar="VAR",
        default=None,
        help="require `Authorization: Bearer <token>`, the token read from variable VAR",
    )
    codec.add_argument("--no-auth", action="store_true", help="no token (a loopback address only)")
    codec.add_argument(
        "--ui-origin",
        action="append",
        metavar="URL",
        help="a Web UI origin browsers may call from (default KEEL_TEMPORAL_UI_URL); repeatable",
    )
    codec.set_defaults(handler=cmd_codec_server)

    worker = sub.add_parser("worker", help="run the workers of one or more task queues")
    worker.add_argument("names", nargs="+", choices=sorted(NAMES))
    worker.set_defaults(handler=cmd_worker)
    return p


class _Stop:
    """How Ctrl-C and SIGTERM end the running command: by cancelling it, unless it stops
    gracefully by itself (the MCP HTTP server: uvicorn drains its requests, then returns)."""

    cancels = True


class _Stopped(KeelError):
    def __init__(self, signum: int) -> None:
        self.code = 128 + signum


async def _until_stopped(args: argparse.Namespace, settings: Settings) -> int:
    """The command, cancelled by Ctrl-C or SIGTERM: it unwinds (workers stop, then the
    servers this process started) within a grace period. `keel dev` and `keel worker`
    replace this with their own graceful stop."""
    loop = asyncio.get_running_loop()
    command = asyncio.current_task()
    assert command is not None
    stopped_by: list[int] = []

    def stop(signum: int) -> None:
        leave_within(SHUTDOWN_GRACE_S, 128 + signum)
        stopped_by.append(signum)
        if _Stop.cancels:
            command.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        return cast(int, await args.handler(args, settings))
    except asyncio.CancelledError:
        if stopped_by:
            raise _Stopped(stopped_by[0]) from None
        raise


def _run(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = get_settings()
        return asyncio.run(_until_stopped(args, settings))
    except _Stopped as stopped:
        print(f"keel: stopped by {signal.Signals(stopped.code - 128).name}", file=sys.stderr)
        return stopped.code
    except (
        UsageError,
        SettingsError,
        TemporalUnreachable,
        ServiceStartError,
        IdentityError,
    ) as err:
        print(terminal_safe(f"keel: error: {err}"), file=sys.stderr)
        return 2
    except RPCError as err:  # the server refused or failed a call ("shard status unknown")
        address = get_settings().temporal_address
        print(
            terminal_safe(
                f"keel: error: the Temporal server at {address} answered {err.status.name}: "
                f"{err.message}; if it keeps saying so, restart it"
            ),
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the command started
        return 130
    except Exception as err:  # a bug: one line here, the traceback in a file
        return _unexpected(err)


def _unexpected(err: Exception) -> int:
    path = Path(tempfile.gettempdir()) / f"keel-error-{os.getpid()}.log"
    with contextlib.suppress(OSError):
        path.write_text("".join(traceback.format_exception(err)))
    first = str(err).splitlines()[0] if str(err) else ""
    print(
        terminal_safe(
            f"keel: error: unexpected {type(err).__name__}: {first} (traceback in {path}; "
            "please report it)"
        ),
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    if argv is None:
        # The `keel` program: leave without interpreter teardown, during which the Temporal
        # client's Rust threads can abort the process (SIGABRT, "PyGILState_Release: thread
        # state ... must be current"; temporalio/sdk-python#300), turning a finished command
        # into exit code 134 about one run in ten. Everything has been done and closed by now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
