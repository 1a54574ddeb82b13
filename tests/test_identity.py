"""Signed identity (keel/_identity.py): a task runs for the user whose credential signed its
start, and only that user or an operator may read it, decide for it, or have Keel's
activities act for them. Pure checks first, then a dev server whose workers hold the key."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import temporalio.client
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

from keel import _search_attributes as sa
from keel import durable
from keel._identity import (
    HEADER,
    OPERATOR,
    Claim,
    Credential,
    IdentityError,
    issue,
    parse_identity_keys,
)
from keel._queues import Queues
from keel.cli import main
from keel.client import connect, memorize, start_task
from keel.contracts import (
    Approval,
    Document,
    MemorizeRequest,
    PendingRequest,
    RecallRequest,
    StepStatus,
    TaskProgress,
    TaskRequest,
    TaskStatus,
)
from keel.plugin import KeelPlugin
from keel.settings import Settings, SettingsError, settings_from_env
from keel.testing import Stack, eventually, scripted_plan
from temporal.devserver import start_test_environment, temporal_cli
from tests.conftest import REPO, scripted_workers, unique

KEY = base64.b64encode(os.urandom(32)).decode()
OTHER_KEY = base64.b64encode(os.urandom(32)).decode()
KEYS = parse_identity_keys(f"id1:{KEY}")


# --- pure: credentials and claims ----------------------------------------------------------


def test_a_credential_round_trips_and_never_prints_its_secret() -> None:
    alice = issue(KEYS, "alice ✓")
    again = Credential.parse(alice.encode())
    assert again == alice and again.user == "alice ✓" and again.role == "user"
    assert alice.secret not in repr(alice).encode() and alice.encode() not in repr(alice)
    with pytest.raises(IdentityError, match="paste the whole line"):
        Credential.parse("keel1.YWxpY2U.admin.id1.c2VjcmV0")  # a role Keel does not know


def test_a_claim_verifies_only_for_its_own_call_user_and_key() -> None:
    alice = issue(KEYS, "alice")
    claim = alice.sign(("start", "wf-1", ""), 1_000)
    assert claim.verify(KEYS, ("start", "wf-1", "")) == claim
    for subject in (("start", "wf-2", ""), ("query", "wf-1")):  # another call
        with pytest.raises(IdentityError, match="does not verify"):
            claim.verify(KEYS, subject)
    for forged in (  # the same MAC under another name, role or time
        dataclasses.replace(claim, user="bob"),
        dataclasses.replace(claim, role=OPERATOR),
        dataclasses.replace(claim, issued_at=2_000),
    ):
        with pytest.raises(IdentityError, match="does not verify"):
            forged.verify(KEYS, ("start", "wf-1", ""))
    stranger = issue(parse_identity_keys(f"id1:{OTHER_KEY}"), "alice")  # same id, other key
    with pytest.raises(IdentityError, match="does not verify"):
        stranger.sign(("start", "wf-1", ""), 1_000).verify(KEYS, ("start", "wf-1", ""))
    with pytest.raises(IdentityError, match="key 'old'"):
        dataclasses.replace(claim, key_id="old").verify(KEYS, ("start", "wf-1", ""))
    # rotation: a credential of the old key still verifies while the old key is listed
    rotated = parse_identity_keys(f"id2:{OTHER_KEY},id1:{KEY}")
    assert claim.verify(rotated, ("start", "wf-1", "")) == claim
    assert issue(rotated, "alice").key_id == "id2"


@pytest.mark.parametrize(
    "data",
    [
        rb'["alice", "user", "id1", 1000, "\u00e9\u00e9"]',  # a MAC hmac cannot compare
        b'["alice", "user", "id1", true, "' + b"0" * 64 + b'"]',
        b'{"user": "alice"}',
        b"not json",
        b'["' + b"a" * 2000 + b'", "user", "id1", 1, "' + b"0" * 64 + b'"]',
    ],
)
def test_a_malformed_claim_is_refused_in_one_line(data: bytes) -> None:
    """Refused (IdentityRefused, final), never a crash that retries a workflow task."""
    with pytest.raises(IdentityError, match="identity header is malformed"):
        Claim.read({HEADER: Payload(metadata={"encoding": b"json/plain"}, data=data)})


def test_bad_identity_settings_are_one_line_that_never_shows_them() -> None:
    with pytest.raises(SettingsError) as bad_key:
        settings_from_env({"KEEL_IDENTITY_KEYS": "id1:c2hvcnQ="})
    assert "is 5 bytes, not 32" in str(bad_key.value)
    with pytest.raises(SettingsError) as bad_credential:
        settings_from_env({"KEEL_CREDENTIAL": "alice-please"})
    assert "paste the whole line" in str(bad_credential.value)
    assert "alice-please" not in str(bad_credential.value)


def test_keel_credential_prints_one_only_for_a_holder_of_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from keel import settings as settings_module

    settings_module.get_settings.cache_clear()
    monkeypatch.delenv("KEEL_IDENTITY_KEYS", raising=False)
    assert main(["credential", "alice"]) == 2
    assert "KEEL_IDENTITY_KEYS is not set" in capsys.readouterr().err
    monkeypatch.setenv("KEEL_IDENTITY_KEYS", f"id1:{KEY}")
    settings_module.get_settings.cache_clear()
    try:
        assert main(["credential", "alice", "--operator"]) == 0
        made = Credential.parse(capsys.readouterr().out.strip())
        assert made == issue(KEYS, "alice", OPERATOR)
        assert main(["credential", "\x1b[2Jroot"]) == 2
        assert "control characters" in capsys.readouterr().err
    finally:
        settings_module.get_settings.cache_clear()


# --- a server whose workers check identity -------------------------------------------------


@dataclasses.dataclass
class Signed:
    stack: Stack
    target: str
    settings: Settings  # the workers'

    async def caller(self, credential: Credential | str | None) -> Client:
        """A Keel client signing with `credential` (None: unsigned, as the temporal CLI)."""
        text = credential.encode() if isinstance(credential, Credential) else credential
        settings = self.settings.model_copy(update={"identity_keys": None, "credential": text})
        return await connect(settings, self.target)


@pytest.fixture(scope="module")
async def signed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Signed]:
    """Its own dev server (continue-as-new suggested after 20 events, so runs hand over for
    real) and scripted workers holding the identity key."""
    env = await start_test_environment(
        "--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=20"
    )
    home: Path = tmp_path_factory.mktemp("signed")
    settings = Settings(
        home=home, planner_model="scripted", reasoner_model="scripted", identity_keys=f"id1:{KEY}"
    )
    target = env.client.service_client.config.target_host
    workers_client = await connect(settings, target)
    try:
        async with scripted_workers(workers_client, settings) as (components, model):
            stack = Stack(env, workers_client, settings, model, components)
            yield Signed(stack, target, settings)
    finally:
        await env.shutdown()


def _refusal(err: BaseException) -> ApplicationError:
    cause = err.cause if isinstance(err, WorkflowFailureError) else err
    assert isinstance(cause, ApplicationError), cause
    assert cause.type == durable.IDENTITY_REFUSED and cause.non_retryable
    return cause


async def test_a_task_runs_only_for_the_user_who_signed_it(signed: Signed) -> None:
    alice = await signed.caller(issue(KEYS, "alice"))
    task = unique("What is 6*7 for alice")
    signed.stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
    )
    # a request naming no user runs for the signed-in one
    handle = await start_task(alice, TaskRequest(task=task))
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED and "42" in result.answer
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.USER) == "alice"

    # Mallory's own client refuses to start a task for Alice, before anything is sent
    mallory = await signed.caller(issue(KEYS, "mallory"))
    with pytest.raises(IdentityError, match="signed in as 'mallory'"):
        await start_task(mallory, TaskRequest(task=unique("recall alice"), user_id="alice"))

    # a caller without a credential (the temporal CLI, an old client): refused, nothing ran
    anyone = await signed.caller(None)
    handle = await start_task(anyone, TaskRequest(task=unique("recall alice"), user_id="alice"))
    with pytest.raises(WorkflowFailureError) as unsigned:
        await handle.result()
    assert "start it with a Keel client holding KEEL_CREDENTIAL" in _refusal(unsigned.value).message
    events = (await handle.fetch_history()).events
    assert not any(e.HasField("activity_task_scheduled_event_attributes") for e in events)

    # a credential made from another key, or one whose role was edited to operator
    forged = issue(parse_identity_keys(f"id1:{OTHER_KEY}"), "alice")
    promoted = dataclasses.replace(issue(KEYS, "mallory"), role=OPERATOR)
    for credential in (forged, promoted):
        client = await signed.caller(credential)
        handle = await start_task(client, TaskRequest(task=unique("recall"), user_id="alice"))
        with pytest.raises(WorkflowFailureError) as bad:
            await handle.result()
        assert "does not verify" in _refusal(bad.value).message

    # an operator may start a task for Alice; it runs for Alice
    operator = await signed.caller(issue(KEYS, "root", OPERATOR))
    task = unique("What is 2+3 for alice")
    signed.stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "2+3"}}),
    )
    result = await (await start_task(operator, TaskRequest(task=task, user_id="alice"))).result()
    assert result.status == TaskStatus.COMPLETED and "5" in result.answer


async def test_only_the_tasks_user_or_an_operator_reads_it_and_decides_for_it(
    signed: Signed,
) -> None:
    alice = await signed.caller(issue(KEYS, "alice"))
    mallory = await signed.caller(issue(KEYS, "mallory"))
    operator = await signed.caller(issue(KEYS, "root", OPERATOR))
    anyone = await signed.caller(None)
    task = unique("Pay bob, then compute 6*7")
    signed.stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "transfer", "args": {"to": "bob", "usd": 5}},
            {"id": "s2", "tool": "calculator", "args": {"expression": "6*7"}},
        ),
    )
    handle = await start_task(alice, TaskRequest(task=task))

    async def waiting() -> list[PendingRequest] | None:
        pending = await alice.get_workflow_handle(handle.id).query(
            durable.QUERY_PENDING, result_type=list[PendingRequest]
        )
        return pending or None

    await eventually(waiting, "the transfer to wait for approval")
    for stranger, says in ((mallory, "neither this task's user"), (anyone, "its own user")):
        theirs = stranger.get_workflow_handle(handle.id)
        with pytest.raises(WorkflowQueryFailedError, match=says):
            await theirs.query(durable.QUERY_STATUS, result_type=TaskProgress)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await theirs.execute_update(
                durable.UPDATE_APPROVE, Approval(step_id="s1", by="alice"), result_type=str
            )
        assert says in str(refused.value.cause)
    seen = await operator.get_workflow_handle(handle.id).query(
        durable.QUERY_STATUS, result_type=TaskProgress
    )
    assert seen.status == TaskStatus.AWAITING_APPROVAL
    await alice.get_workflow_handle(handle.id).execute_update(
        durable.UPDATE_APPROVE, Approval(step_id="s1", by="alice"), result_type=str
    )
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    assert [s.status for s in result.steps] == [StepStatus.SUCCEEDED, StepStatus.SUCCEEDED]
    # the refused updates never reached history: one update accepted, Alice's
    events = (await handle.fetch_history()).events
    accepted = [
        e for e in events if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert len(accepted) == 1


async def test_identity_follows_a_task_into_continue_as_new(signed: Signed) -> None:
    """The server suggests continue-as-new after 20 events: the next run is signed by the
    worker for the same user, and its activities still verify."""
    alice = await signed.caller(issue(KEYS, "alice"))
    task = unique("Compute 6*7 and call the service")
    signed.stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}},
            {"id": "s2", "tool": "flaky", "args": {"key": task, "failures": 99}},
        ),
        scripted_plan({"id": "s3", "tool": "calculator", "args": {"expression": "1+1"}}),
    )
    handle = await start_task(alice, TaskRequest(task=task))
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    progress = await handle.query(durable.QUERY_STATUS, result_type=TaskProgress)
    assert any(e.startswith("continued as new (run 2)") for e in progress.events)


async def test_identity_follows_a_task_into_its_sub_agents_and_memory(signed: Signed) -> None:
    alice = await signed.caller(issue(KEYS, "alice"))
    task = unique("Have the coder work out 6*7")
    sub_task = unique("compute 6*7")
    signed.stack.model.script(
        task, "plan", scripted_plan({"id": "s1", "tool": "coder", "args": {"task": sub_task}})
    )
    signed.stack.model.script(
        sub_task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
    )
    result = await (await start_task(alice, TaskRequest(task=task))).result()
    assert result.status == TaskStatus.COMPLETED
    [step] = result.steps
    assert step.status == StepStatus.SUCCEEDED and step.output is not None
    assert "42" in step.output["answer"]

    note = Document(source="note.txt", text="The secret word is swordfish.")
    done = await memorize(alice, MemorizeRequest(user_id="alice", documents=[note]))
    assert (await done.result()).chunks == {"note.txt": 1}
    anyone = await signed.caller(None)
    forged = await memorize(anyone, MemorizeRequest(user_id="alice", documents=[note]))
    with pytest.raises(WorkflowFailureError) as refused:
        await forged.result()
    _refusal(refused.value)


async def _keel(signed: Signed, credential: Credential, *args: str) -> tuple[int, str, str]:
    """`keel ARGS` as the holder of `credential`, against the signed server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env |= {
        "KEEL_TEMPORAL_ADDRESS": signed.target,
        "KEEL_HOME": str(signed.settings.home),
        "KEEL_CREDENTIAL": credential.encode(),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel.cli", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_keel_pending_and_status_show_the_callers_own_tasks(signed: Signed) -> None:
    alice, mallory = issue(KEYS, "alice"), issue(KEYS, "mallory")
    operator = issue(KEYS, "root", OPERATOR)
    task = unique("Pay carol")
    signed.stack.model.script(
        task, "plan", scripted_plan({"id": "s1", "tool": "transfer", "args": {"to": "c", "usd": 1}})
    )
    handle = await start_task(await signed.caller(alice), TaskRequest(task=task))

    async def listed() -> bool:  # visibility lists it a moment after it starts waiting
        code, out, _ = await _keel(signed, alice, "pending")
        return code == 0 and handle.id in out

    await eventually(listed, "alice's waiting task in her `keel pending`", timeout_s=60)

    code, out, _ = await _keel(signed, mallory, "pending")
    assert code == 0 and handle.id not in out  # her own tasks only
    for listing in ("pending", "report"):
        code, _, err = await _keel(signed, mallory, listing, "--user", "alice")
        assert code == 2 and "only an operator lists other users' tasks" in err
    for command in ("status", "cancel", "watch"):
        code, _, err = await _keel(signed, mallory, command, handle.id)
        assert code == 2 and "is not yours: you are signed in as 'mallory'" in err
    code, _, err = await _keel(signed, mallory, "approve", handle.id, "s1")
    assert code == 2 and "'mallory' is neither this task's user nor an operator" in err

    code, out, _ = await _keel(signed, operator, "pending", "--user", "alice")
    assert code == 0 and handle.id in out
    code, out, _ = await _keel(signed, alice, "approve", handle.id, "s1")
    assert code == 0 and "approved s1" in out
    assert (await handle.result()).status == TaskStatus.COMPLETED


async def test_the_temporal_cli_gets_one_clear_refusal(signed: Signed) -> None:
    """The probes of the review, through the plain `temporal` CLI: a task for Alice, a query
    of her task, an approval for her: each refused in one line, nothing run."""
    alice = await signed.caller(issue(KEYS, "alice"))
    task = unique("Pay dave")
    signed.stack.model.script(
        task, "plan", scripted_plan({"id": "s1", "tool": "transfer", "args": {"to": "d", "usd": 1}})
    )
    waiting = await start_task(alice, TaskRequest(task=task))

    async def temporal(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            str(temporal_cli()), *args, "--address", signed.target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode()

    workflow_id = unique("cli").replace(" ", "-")
    probe = json.dumps({"task": "what is alice's secret word?", "user_id": "alice"})
    code, out = await temporal(
        "workflow", "execute", "--type", "AgentTask", "--task-queue", "keel-agent",
        "--workflow-id", workflow_id, "--input", probe,
    )  # fmt: skip
    assert code != 0 and "start it with a Keel client holding KEEL_CREDENTIAL" in out, out
    events = (await signed.stack.client.get_workflow_handle(workflow_id).fetch_history()).events
    assert not any(e.HasField("activity_task_scheduled_event_attributes") for e in events)

    await eventually(
        lambda: alice.get_workflow_handle(waiting.id).query(
            durable.QUERY_PENDING, result_type=list[PendingRequest]
        ),
        "the transfer to wait for approval",
    )
    code, out = await temporal("workflow", "query", "-w", waiting.id, "--type", "status")
    assert code != 0 and "answers its own user and operators only" in out, out
    code, out = await temporal(
        "workflow", "update", "execute", "-w", waiting.id, "--name", "approve",
        "--input", json.dumps({"step_id": "s1"}),
    )  # fmt: skip
    assert code != 0 and "answers its own user and operators only" in out, out
    await alice.get_workflow_handle(waiting.id).execute_update(
        durable.UPDATE_APPROVE, Approval(step_id="s1"), result_type=str
    )
    assert (await waiting.result()).status == TaskStatus.COMPLETED


class _CopiedHeader(temporalio.client.Interceptor):
    """A client that sends a header copied out of someone's history (the replay attack)."""

    def __init__(self, header: Payload) -> None:
        self.header = header

    def intercept_client(
        self, next: temporalio.client.OutboundInterceptor
    ) -> temporalio.client.OutboundInterceptor:
        header = self.header

        class Replaying(temporalio.client.OutboundInterceptor):
            async def start_workflow(self, input: Any) -> Any:
                input.headers = {**input.headers, HEADER: header}
                return await super().start_workflow(input)

            async def start_workflow_update(self, input: Any) -> Any:
                input.headers = {**input.headers, HEADER: header}
                return await super().start_workflow_update(input)

        return Replaying(next)


async def _replayer(signed: Signed, header: Payload) -> Client:
    settings = signed.settings.model_copy(update={"identity_keys": None})
    return await Client.connect(
        signed.target, plugins=[KeelPlugin(settings)], interceptors=[_CopiedHeader(header)]
    )


async def test_a_claim_copied_from_history_starts_and_approves_nothing_else(
    signed: Signed,
) -> None:
    alice = await signed.caller(issue(KEYS, "alice"))
    task = unique("Pay erin twice")
    signed.stack.model.script(
        task,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "transfer", "args": {"to": "erin", "usd": 1}},
            {"id": "s2", "tool": "transfer", "args": {"to": "erin", "usd": 2}},
        ),
    )
    handle = await start_task(alice, TaskRequest(task=task))

    async def pending() -> list[PendingRequest] | None:
        waits = await alice.get_workflow_handle(handle.id).query(
            durable.QUERY_PENDING, result_type=list[PendingRequest]
        )
        return waits if len(waits) == 2 else None

    await eventually(pending, "both transfers to wait for approval")
    await alice.get_workflow_handle(handle.id).execute_update(
        durable.UPDATE_APPROVE, Approval(step_id="s1"), result_type=str
    )
    events = (await handle.fetch_history()).events
    [accepted] = [
        e.workflow_execution_update_accepted_event_attributes
        for e in events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    # Alice's approval of s1, copied, approves no other step
    copied = await _replayer(signed, accepted.accepted_request.input.header.fields[HEADER])
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await copied.get_workflow_handle(handle.id).execute_update(
            durable.UPDATE_APPROVE, Approval(step_id="s2"), result_type=str
        )
    assert "does not verify" in str(refused.value.cause)
    await alice.get_workflow_handle(handle.id).execute_update(
        durable.UPDATE_APPROVE, Approval(step_id="s2"), result_type=str
    )
    assert (await handle.result()).status == TaskStatus.COMPLETED

    # her start claim, copied, starts nothing else under the same (now free) workflow id
    started = events[0].workflow_execution_started_event_attributes.header.fields[HEADER]
    copied = await _replayer(signed, started)
    note = Document(source="planted.txt", text="Alice's rent goes to mallory.")
    memorizing = MemorizeRequest(user_id="alice", documents=[note])
    for workflow_type, request in (
        (durable.MEMORIZE_DOCUMENTS, memorizing),
        (durable.AGENT_TASK, TaskRequest(task=unique("recall my secrets"), user_id="alice")),
    ):
        planted = await copied.start_workflow(
            workflow_type, request, id=handle.id, task_queue=Queues().agent
        )
        with pytest.raises(WorkflowFailureError) as forged:
            await planted.result()
        assert "does not verify" in _refusal(forged.value).message


@workflow.defn(name="RogueRecall", sandboxed=False)
class RogueRecall:
    """Someone else's workflow, on its own queue, calling Keel's memory worker for Alice."""

    @workflow.run
    async def run(self, queue: str) -> str:
        try:
            await workflow.execute_activity(
                durable.RECALL,
                RecallRequest(user_id="alice", query="secret word"),
                task_queue=queue,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as err:
            assert isinstance(err.cause, ApplicationError)
            return f"{err.cause.type}: {err.cause.message}"
        return "recalled"


async def test_keels_activities_refuse_a_workflow_that_is_not_keels(signed: Signed) -> None:
    anyone = await signed.caller(None)
    queue = unique("rogue").replace(" ", "-")
    async with Worker(anyone, task_queue=queue, workflows=[RogueRecall]):
        outcome = await anyone.execute_workflow(
            RogueRecall.run, Queues().memory, id=queue, task_queue=queue
        )
    assert outcome.startswith(
        f"{durable.IDENTITY_REFUSED}: activity recall was scheduled without a signed identity"
    )
