"""Every exception Keel raises on purpose, in one tree rooted at `KeelError`.

    KeelError
    +-- Failure                 a failure Temporal records: an ApplicationError of `type`
    |   +-- ToolRefusal             ToolError, final: a tool refuses this call's input
    |   |   +-- InvalidToolOutput   InvalidToolOutput, final: output breaks its schema
    |   |   +-- CalculatorError     (activities/tools/calculator.py) not arithmetic it does
    |   |   +-- MissingSecret       (activities/tools/mcp_remote.py) a variable is not set
    |   |   +-- WorkspaceError      (sandbox/workspace.py) a path outside the task's files
    |   +-- ToolFailed              ToolFailed, retried: a tool crashed (a bug or an outage)
    |   +-- BudgetExceeded          BudgetExceeded, final: the call cannot fit its allowance
    |   +-- InvalidInput            InvalidInput, final: a payload breaks its contract
    |   +-- IdentityRefused         IdentityRefused, final: the caller's signed identity fails
    |   +-- HttpUnavailable         HttpUnavailable, retried: an API is down or busy
    |   +-- ModelFailure            a model provider's answer, or its silence
    |       +-- ModelAuthError      ModelAuthError, final: bad key, no rights, no credit
    |       +-- ModelQuotaExceeded  ModelQuotaExceeded, final: the account's quota is spent
    |       +-- ModelRateLimited    ModelRateLimited, retried after the provider's delay
    |       +-- ModelUnavailable    ModelUnavailable, retried unless the provider says not
    |       +-- ModelBadRequest     ModelBadRequest, final: this request fails as it is
    |       +-- ModelRefused        ModelRefused, final: the model declined to answer
    +-- SettingsError           (keel/settings.py) ValueError: a KEEL_* value is unusable
    +-- ConditionError          (keel/_conditions.py) ValueError: a step condition is bad
    +-- VectorStoreError        (activities/memory/vectors.py) ValueError: store misconfigured
    +-- TemporalUnreachable     (keel/client.py) ConnectionError: no Temporal server answers
    +-- WatchRefused            (keel/client.py) a task refused a watcher (8 wait already)
    +-- PayloadMissing          (keel/_payload_store.py) LookupError: a claim's payload is gone
    +-- SandboxError            (sandbox/backend.py) RuntimeError: the sandbox cannot run
    +-- SqlUnavailable          (activities/tools/sql.py) RuntimeError: the database is down
    +-- EncryptionError         (keel/_encryption.py) ValueError: a key or a payload is bad
    +-- IdentityError           (keel/_identity.py) ValueError: a credential, key or caller refused
    +-- BudgetExhausted         (keel/_core/budget.py) the next call does not fit what is left
    +-- TimedOutWaiting         (workflows/human.py) nobody decided in time; the task gives up
    +-- UsageError              (keel/cli.py) bad command-line input: one line, exit 2
    +-- _Stopped                (keel/cli.py) SIGINT or SIGTERM ended the command
    +-- ServiceStartError       RuntimeError: a server Keel starts is missing or won't start
        +-- McpServerError      (activities/tools/mcp_remote.py) an MCP server at discovery
        +-- Neo4jError          (workers/neo4j/server.py)
        +-- TritonError         (workers/triton/server.py)

A `Failure` is what an activity fails with: its class carries the failure type Temporal stores
(the names are durable: keel/durable.py) and whether a retry can help ("final": never
retried). `to_application_error()` builds the `ApplicationError` that crosses Temporal.

A tool refuses its input by raising a `ToolRefusal`; the tool activity turns only those into a
final failure. Anything else a tool raises is a bug or an outage: it propagates, and Temporal
retries it when the tool is idempotent.

The other classes are raised and caught inside Keel; each keeps the builtin base its callers
catch (SettingsError is a ValueError, TemporalUnreachable a ConnectionError, ...).

Not in the tree: `BadRequest` in workers/triton/model_repository/planner/1/model.py runs in
Triton's own Python process, which cannot import Keel; it never leaves that process (the
client sees an HTTP 400, a ModelBadRequest). And the AgentTask's Update validators
(workflows/human.py) refuse a decision with a plain `ValueError`: Temporal hands the refusal
to the caller under that type name, which clients match on.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self

from keel import durable

if TYPE_CHECKING:
    from temporalio.exceptions import ApplicationError

__all__ = [
    "BudgetExceeded",
    "Failure",
    "HttpUnavailable",
    "IdentityRefused",
    "InvalidInput",
    "InvalidToolOutput",
    "KeelError",
    "ModelAuthError",
    "ModelBadRequest",
    "ModelFailure",
    "ModelQuotaExceeded",
    "ModelRateLimited",
    "ModelRefused",
    "ModelUnavailable",
    "ServiceStartError",
    "ToolFailed",
    "ToolRefusal",
    "one_line",
]


class KeelError(Exception):
    """The root of every exception Keel raises on purpose; its message is one line saying
    what is wrong and, where it can, what to do."""


class ServiceStartError(KeelError, RuntimeError):
    """A server Keel starts for itself (Triton, ...) is missing or would not start; the
    message says what to do."""


class Failure(KeelError):
    """A failure that crosses Temporal as an `ApplicationError` of type `type`.

    `final` is the class's rule (never retried); one failure may override it (a provider that
    says a retry cannot help), and `retryable` says what holds for this one.
    `next_retry_delay` replaces the retry policy's backoff once (a provider's Retry-After).
    `details` travel with the failure, as ApplicationError details.
    Subclasses keep this constructor (`reworded` relies on it)."""

    type: ClassVar[str]  # the failure type Temporal stores: a name from keel/durable.py
    final: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *details: Any,
        next_retry_delay: timedelta | None = None,
        non_retryable: bool | None = None,
    ) -> None:
        if not isinstance(getattr(type(self), "type", None), str):
            raise TypeError(f"{type(self).__name__} has no failure type: raise a subclass")
        super().__init__(message)
        self.message = message
        self.details = details
        self.next_retry_delay = next_retry_delay
        self.retryable = not (self.final if non_retryable is None else non_retryable)

    def to_application_error(self) -> ApplicationError:
        """The ApplicationError an activity raises for this failure."""
        # Imported here, not above: the pure core (keel/_core, no Temporal) uses this tree too.
        from temporalio.exceptions import ApplicationError

        return ApplicationError(
            self.message,
            *self.details,
            type=self.type,
            non_retryable=not self.retryable,
            next_retry_delay=self.next_retry_delay,
        )

    def reworded(self, message: str) -> Self:
        """The same failure (class, details, retry rule) saying `message` instead."""
        return self.__class__(
            message,
            *self.details,
            next_retry_delay=self.next_retry_delay,
            non_retryable=not self.retryable,
        )


class ToolRefusal(Failure):
    """A tool refuses this call (its input, or what the input led to): retrying the same call
    cannot help, the plan has to change. Tools raise it, or a subclass, on purpose."""

    type = durable.TOOL_ERROR


class InvalidToolOutput(ToolRefusal):
    """A tool returned data that breaks its own output schema."""

    type = durable.INVALID_OUTPUT


class ToolFailed(Failure):
    """A tool raised something other than a refusal: a bug or an outage. Its message names
    the exception's class; retried when the tool is idempotent."""

    type = durable.TOOL_FAILED
    final = False


class BudgetExceeded(Failure):
    """A call (a model's or a tool's) cannot fit in what it was allowed to spend."""

    type = durable.BUDGET_EXCEEDED


class InvalidInput(Failure):
    """A payload did not match its contract (bad task JSON, a bad update's argument)."""

    type = durable.INVALID_INPUT


class IdentityRefused(Failure):
    """A workflow or activity refuses its caller: no signed identity, one that does not
    verify, or one that may not act for the user named (keel/_identity.py)."""

    type = durable.IDENTITY_REFUSED


class HttpUnavailable(Failure):
    """An allowlisted API did not answer, or answered 429 or 5xx: a later try may work."""

    type = durable.HTTP_UNAVAILABLE
    final = False


class ModelFailure(Failure):
    """A model provider's error, or no answer from it."""


class ModelAuthError(ModelFailure):
    """The key is missing, wrong, not allowed this model, or its account cannot pay."""

    type = durable.MODEL_AUTH_ERROR


class ModelQuotaExceeded(ModelFailure):
    """The account's quota is used up (unlike a rate limit, waiting does not help)."""

    type = durable.MODEL_QUOTA_EXCEEDED


class ModelRateLimited(ModelFailure):
    """Too many requests: retried, after the provider's Retry-After when it gives one."""

    type = durable.MODEL_RATE_LIMITED
    final = False


class ModelUnavailable(ModelFailure):
    """A 5xx, an overloaded provider, a refused or timed-out connection, a dead model
    process: retried, unless the provider says a retry cannot help."""

    type = durable.MODEL_UNAVAILABLE
    final = False


class ModelBadRequest(ModelFailure):
    """The provider refused the request as it is (400, 404, 422, ...)."""

    type = durable.MODEL_BAD_REQUEST


class ModelRefused(ModelFailure):
    """The model declined to answer."""

    type = durable.MODEL_REFUSED


def one_line(err: BaseException) -> str:
    """An exception as one line: its failure type (an ApplicationError's or a Failure's) or
    class name, and the first line of its message; a group of one stands for its member."""
    while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]
    named = getattr(err, "type", None)
    kind = named if isinstance(named, str) and named else type(err).__name__
    lines = str(err).strip().splitlines()
    return f"{kind}: {lines[0]}" if lines else kind
