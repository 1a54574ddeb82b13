"""Who a task runs for: signed identity claims, checked by the workers.

Without `KEEL_IDENTITY_KEYS` a task's `user_id` is whatever its caller wrote (one trusted
tenant: the embedded default). With it, the workers accept only what a caller holding a
credential signed:

- An operator makes a credential per person (`keel credential alice`, `--operator` for the
  operator role) from a key in KEEL_IDENTITY_KEYS; the person sets it as KEEL_CREDENTIAL. A
  credential is a secret derived from the key, the user and the role: it names one user and
  cannot be turned into another's.
- Every call a Keel client makes (start, query, update) carries a claim in the `keel-identity`
  header: the user, the role and an HMAC of what the call is for (the workflow id; the update
  id; when it was made) under the credential's secret. The credential itself never travels.
- The workflow checks the start claim before anything runs: a user may start tasks for
  themselves only, an operator for anyone. Queries and updates (approvals, answers) need a
  claim of the task's user or an operator.
- The workflow signs each activity it schedules, child it starts and continue-as-new with the
  worker's key (bound to that workflow run), and every activity checks its claim and that
  every `user_id` in its input is the claim's user: a workflow someone else writes cannot
  call Keel's activities for a user it names.

A claim binds to what it is for, so one copied from history is worth nothing elsewhere: a
start claim to the workflow type, id, input (its digest), the run it continues or the parent
that starts it, and a time within SKEW_S of the start; an update claim to the update's name,
id and input and a time within SKEW_S of the workflow task that runs it; an activity claim
to one workflow run; a query claim (never in history) to the workflow and query name.

What this does not do: decide who may reach the Temporal cluster, or cancel, terminate,
reset or list workflows there (its own mTLS or API keys and authorizer do), or hide history
from someone who can read it (KEEL_ENCRYPTION_KEYS does). Rotation: add a new key to every
worker's list (second), then move it first, and drop the old key only once the tasks
started under it have ended; a replayed history keeps the verdict it had when it ran.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import temporalio.client
import temporalio.worker
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError

from keel._keys import parse_key_list
from keel.errors import IdentityRefused, KeelError

HEADER = "keel-identity"
USER = "user"
OPERATOR = "operator"
ROLES = (USER, OPERATOR)
SKEW_S = 120  # a start or update claim is accepted this long either side of its time
_MAC = re.compile(r"^[0-9a-f]{64}$")
MAX_CLAIM_BYTES = 1024
_PREFIX = "keel1"
_ENCODING = b"json/plain"


class IdentityError(KeelError, ValueError):
    """A credential or key setting that cannot be used, or a call its caller may not make."""


def parse_identity_keys(spec: str) -> dict[str, bytes]:
    return parse_key_list(spec, "KEEL_IDENTITY_KEYS", IdentityError)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(key: bytes, user: str, role: str) -> bytes:
    return hmac.digest(key, json.dumps(["keel-credential", role, user]).encode(), "sha256")


@dataclass(frozen=True)
class _Principal:
    user: str
    role: str

    def may_act_for(self, user: str | None) -> bool:
        """An operator acts for anyone, a user for themselves (None: nobody known yet)."""
        return self.role == OPERATOR or (user is not None and self.user == user)


@dataclass(frozen=True)
class Credential(_Principal):
    """What a caller holds: who they are, their role, and a secret only the key can make."""

    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"Credential(user={self.user!r}, role={self.role!r}, key_id={self.key_id!r})"

    def encode(self) -> str:
        return ".".join(
            (_PREFIX, _b64(self.user.encode()), self.role, self.key_id, _b64(self.secret))
        )

    @classmethod
    def parse(cls, text: str) -> Credential:
        parts = text.strip().split(".")
        try:
            if len(parts) != 5 or parts[0] != _PREFIX or parts[2] not in ROLES:
                raise ValueError
            user = _unb64(parts[1]).decode()
            secret = _unb64(parts[4])
        except (ValueError, binascii.Error):
            raise IdentityError(
                "KEEL_CREDENTIAL is not a Keel credential: paste the whole line "
                "`keel credential USER` printed"
            ) from None
        return cls(user=user, role=parts[2], key_id=parts[3], secret=secret)

    def sign(self, subject: Sequence[str], issued_at: int) -> Claim:
        return Claim(
            self.user, self.role, self.key_id, issued_at, _mac(self.secret, subject, issued_at)
        )


def issue(keys: Mapping[str, bytes], user: str, role: str = USER) -> Credential:
    """A credential for `user` under the first (active) key."""
    if role not in ROLES:
        raise IdentityError(f"role {role!r}: use one of {', '.join(ROLES)}")
    key_id, key = next(iter(keys.items()))
    return Credential(user, role, key_id, _derive(key, user, role))


def _mac(secret: bytes, subject: Sequence[str], issued_at: int) -> str:
    return hmac.digest(secret, json.dumps([*subject, issued_at]).encode(), "sha256").hex()


@dataclass(frozen=True)
class Claim(_Principal):
    """What travels in the header: who, in what role, under which key, when, and the MAC."""

    key_id: str
    issued_at: int
    mac: str

    def payload(self) -> Payload:
        data = [self.user, self.role, self.key_id, self.issued_at, self.mac]
        return Payload(metadata={"encoding": _ENCODING}, data=json.dumps(data).encode())

    @classmethod
    def read(cls, headers: Mapping[str, Payload]) -> Claim | None:
        payload = headers.get(HEADER)
        if payload is None:
            return None
        try:
            if len(payload.data) > MAX_CLAIM_BYTES:
                raise ValueError
            user, role, key_id, issued_at, mac = json.loads(payload.data)
            if not all(isinstance(v, str) for v in (user, role, key_id, mac)):
                raise ValueError
            if not isinstance(issued_at, int) or isinstance(issued_at, bool):
                raise ValueError
            if not _MAC.match(mac):
                raise ValueError
        except (ValueError, TypeError):
            raise IdentityError("the caller's identity header is malformed") from None
        return cls(user, role, key_id, issued_at, mac)

    def verify(self, keys: Mapping[str, bytes], subject: Sequence[str]) -> Claim:
        key = keys.get(self.key_id)
        if key is None:
            raise IdentityError(
                f"the caller's credential is made with key {self.key_id!r}, which the workers "
                "do not have: issue a new credential, or add the key to KEEL_IDENTITY_KEYS"
            )
        if self.role not in ROLES:
            raise IdentityError(f"the caller's role {self.role!r} is not one Keel knows")
        expected = _mac(_derive(key, self.user, self.role), subject, self.issued_at)
        if not hmac.compare_digest(expected, self.mac):
            raise IdentityError(
                f"the caller's identity ({self.user!r}) does not verify: its credential is "
                "not one the workers' key made, or the claim was made for another call"
            )
        return self

    def made_near(self, when: float, what: str) -> Claim:
        if abs(self.issued_at - when) > SKEW_S:
            raise IdentityError(
                f"the caller's identity claim for {what} was made {abs(self.issued_at - when):.0f}"
                f" s from when it arrived (at most {SKEW_S} s): check the caller's clock, and "
                "send it again"
            )
        return self


def digest(args: Sequence[Any]) -> str:
    """What a claim says about a call's input: the same on the caller (the objects it sends)
    and in the worker (the objects it decoded)."""
    plain = [a.model_dump(mode="json") if isinstance(a, BaseModel) else a for a in args]
    text = json.dumps(plain, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def caller_of(client: temporalio.client.Client) -> Credential | None:
    """The credential a client signs with (KeelPlugin installed it), if any."""
    for interceptor in client.config(active_config=True).get("interceptors", []):
        if isinstance(interceptor, KeelIdentity) and interceptor.credential:
            return interceptor.credential
    return None


def _refused(err: IdentityError) -> ApplicationError:
    return IdentityRefused(str(err)).to_application_error()


def users_named(args: Sequence[Any]) -> set[str]:
    """The `user_id`s a workflow's or activity's input names (None: shared, no user)."""
    return {u for a in args if isinstance(u := getattr(a, "user_id", None), str)}


class KeelIdentity(temporalio.client.Interceptor, temporalio.worker.Interceptor):
    """Signs what a client sends with `credential`; checks, in workers holding `keys`, that
    workflows and activities run only for the user who asked."""

    def __init__(self, credential: Credential | None, keys: Mapping[str, bytes] | None) -> None:
        self.credential = credential
        self.keys = dict(keys) if keys else None

    def intercept_client(
        self, next: temporalio.client.OutboundInterceptor
    ) -> temporalio.client.OutboundInterceptor:
        return _ClientSigner(next, self.credential) if self.credential else next

    def intercept_activity(
        self, next: temporalio.worker.ActivityInboundInterceptor
    ) -> temporalio.worker.ActivityInboundInterceptor:
        return _ActivityGuard(next, self.keys) if self.keys else next

    def workflow_interceptor_class(
        self, input: temporalio.worker.WorkflowInterceptorClassInput
    ) -> type[temporalio.worker.WorkflowInboundInterceptor] | None:
        if not self.keys:
            return None
        # the SDK builds the class inside the workflow sandbox without arguments: the keys
        # ride on a subclass
        return type("_KeyedWorkflowGuard", (_WorkflowGuard,), {"keys": self.keys})


# --- the caller ------------------------------------------------------------------------------


class _ClientSigner(temporalio.client.OutboundInterceptor):
    def __init__(self, next: temporalio.client.OutboundInterceptor, credential: Credential) -> None:
        super().__init__(next)
        self.credential = credential

    def _signed(self, headers: Mapping[str, Payload], subject: Sequence[str]) -> dict[str, Payload]:
        claim = self.credential.sign(subject, int(time.time()))
        return {**headers, HEADER: claim.payload()}

    async def start_workflow(
        self, input: temporalio.client.StartWorkflowInput
    ) -> temporalio.client.WorkflowHandle[Any, Any]:
        for user in users_named(input.args):  # say so here, not in a failed task
            if not self.credential.may_act_for(user):
                raise IdentityError(
                    f"you are signed in as {self.credential.user!r} (KEEL_CREDENTIAL), which "
                    f"may not start a task for user {user!r}: leave the user out, or ask an "
                    "operator"
                )
        subject = ("start", input.workflow, input.id, "", "", digest(input.args))
        input.headers = self._signed(input.headers, subject)
        return await super().start_workflow(input)

    async def query_workflow(self, input: temporalio.client.QueryWorkflowInput) -> Any:
        input.headers = self._signed(input.headers, ("query", input.id, input.query))
        return await super().query_workflow(input)

    async def start_workflow_update(
        self, input: temporalio.client.StartWorkflowUpdateInput
    ) -> temporalio.client.WorkflowUpdateHandle[Any]:
        input.update_id = input.update_id or str(uuid.uuid4())
        subject = ("update", input.id, input.update, input.update_id, digest(input.args))
        input.headers = self._signed(input.headers, subject)
        return await super().start_workflow_update(input)


# --- the workflow ----------------------------------------------------------------------------


class _WorkflowGuard(temporalio.worker.WorkflowInboundInterceptor):
    keys: ClassVar[dict[str, bytes]]

    def __init__(self, next: temporalio.worker.WorkflowInboundInterceptor) -> None:
        super().__init__(next)
        # the user it runs for, signing what it starts: set once the start claim is checked
        self.signer: Credential | None = None

    def init(self, outbound: temporalio.worker.WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowSigner(outbound, self))

    def _start_claim(self, args: Sequence[Any]) -> Claim:
        info = workflow.info()
        claim = Claim.read(info.headers)
        if claim is None:
            raise IdentityError(
                "this Keel checks who starts a task (KEEL_IDENTITY_KEYS): start it with a "
                "Keel client holding KEEL_CREDENTIAL (`keel credential USER` makes one)"
            )
        if claim.key_id not in self.keys and workflow.unsafe.is_replaying():
            return claim  # it verified when it ran; its key has been retired since
        parent = info.parent.run_id if info.parent else ""
        subject = (
            "start",
            info.workflow_type,
            info.workflow_id,
            info.continued_run_id or "",
            parent,
            digest(args),
        )
        claim.verify(self.keys, subject)
        return claim.made_near(info.workflow_start_time.timestamp(), "its start")

    async def execute_workflow(self, input: temporalio.worker.ExecuteWorkflowInput) -> Any:
        try:
            claim = self._start_claim(input.args)
            named = users_named(input.args)
            refused = sorted(u for u in named if not claim.may_act_for(u))
            if refused:
                raise IdentityError(
                    f"{claim.user!r} may not run a task for user {refused[0]!r}: a user runs "
                    "tasks for themselves, an operator for anyone"
                )
        except IdentityError as err:
            raise _refused(err) from None
        self.signer = issue(self.keys, next(iter(named)) if len(named) == 1 else claim.user)
        return await super().execute_workflow(input)

    def _caller_may_see(self, headers: Mapping[str, Payload], subject: Sequence[str]) -> Claim:
        try:
            claim = Claim.read(headers)
            if claim is None:
                raise IdentityError(
                    "this task answers its own user and operators only: ask with a Keel "
                    "client holding KEEL_CREDENTIAL"
                )
            claim.verify(self.keys, subject)
            # before the task has checked its start, only an operator may ask
            if not claim.may_act_for(self.signer.user if self.signer else None):
                raise IdentityError(f"{claim.user!r} is neither this task's user nor an operator")
        except IdentityError as err:
            raise _refused(err) from None
        return claim

    async def handle_query(self, input: temporalio.worker.HandleQueryInput) -> Any:
        if not input.query.startswith("__"):  # the SDK's own (stack trace, metadata): the UI's
            subject = ("query", workflow.info().workflow_id, input.query)
            self._caller_may_see(input.headers, subject)
        return await super().handle_query(input)

    def handle_update_validator(self, input: temporalio.worker.HandleUpdateInput) -> None:
        info = workflow.info()
        subject = ("update", info.workflow_id, input.update, input.id, digest(input.args))
        claim = self._caller_may_see(input.headers, subject)
        try:  # an update id is run once per run: a copy sent to a later run is too late
            claim.made_near(workflow.now().timestamp(), f"update {input.update}")
        except IdentityError as err:
            raise _refused(err) from None
        super().handle_update_validator(input)


class _WorkflowSigner(temporalio.worker.WorkflowOutboundInterceptor):
    """Signs what the workflow starts, for the user it runs for, with the worker's key."""

    def __init__(
        self, next: temporalio.worker.WorkflowOutboundInterceptor, guard: _WorkflowGuard
    ) -> None:
        super().__init__(next)
        self.guard = guard

    def _signed(self, headers: Mapping[str, Payload], subject: Sequence[str]) -> dict[str, Payload]:
        if self.guard.signer is None:  # not checked: nothing is signed for it
            return dict(headers)
        claim = self.guard.signer.sign(subject, int(workflow.now().timestamp()))
        return {**headers, HEADER: claim.payload()}

    def _run(self) -> tuple[str, str]:
        info = workflow.info()
        return info.workflow_id, info.run_id

    def start_activity(
        self, input: temporalio.worker.StartActivityInput
    ) -> workflow.ActivityHandle[Any]:
        input.headers = self._signed(input.headers, ("activity", *self._run()))
        return super().start_activity(input)

    def start_local_activity(
        self, input: temporalio.worker.StartLocalActivityInput
    ) -> workflow.ActivityHandle[Any]:
        input.headers = self._signed(input.headers, ("activity", *self._run()))
        return super().start_local_activity(input)

    async def start_child_workflow(
        self, input: temporalio.worker.StartChildWorkflowInput
    ) -> workflow.ChildWorkflowHandle[Any, Any]:
        parent = workflow.info().run_id
        subject = ("start", input.workflow, input.id, "", parent, digest(input.args))
        input.headers = self._signed(input.headers, subject)
        return await super().start_child_workflow(input)

    def continue_as_new(self, input: temporalio.worker.ContinueAsNewInput) -> Any:
        info = workflow.info()
        parent = info.parent.run_id if info.parent else ""  # the next run keeps this run's
        subject = (
            "start",
            input.workflow or info.workflow_type,
            info.workflow_id,
            info.run_id,
            parent,
            digest(input.args),
        )
        input.headers = self._signed(input.headers, subject)
        return super().continue_as_new(input)


# --- the activity ----------------------------------------------------------------------------


class _ActivityGuard(temporalio.worker.ActivityInboundInterceptor):
    def __init__(
        self, next: temporalio.worker.ActivityInboundInterceptor, keys: dict[str, bytes]
    ) -> None:
        super().__init__(next)
        self.keys = keys

    async def execute_activity(self, input: temporalio.worker.ExecuteActivityInput) -> Any:
        info = activity.info()
        try:
            claim = Claim.read(input.headers)
            if claim is None:
                raise IdentityError(
                    f"activity {info.activity_type} was scheduled without a signed identity: "
                    "only Keel's workflows, on workers holding KEEL_IDENTITY_KEYS, may call it"
                )
            claim.verify(
                self.keys, ("activity", info.workflow_id or "", info.workflow_run_id or "")
            )
            refused = sorted(u for u in users_named(input.args) if not claim.may_act_for(u))
            if refused:
                raise IdentityError(
                    f"activity {info.activity_type} runs for {claim.user!r} but its input "
                    f"names user {refused[0]!r}"
                )
        except IdentityError as err:
            raise _refused(err) from None
        return await super().execute_activity(input)
