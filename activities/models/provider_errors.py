"""Provider SDK failures as Temporal `ApplicationError`s, so that Temporal does the retrying.

The SDK clients run with `max_retries=0`; an activity that hits a provider error raises one
of these instead. Retryable errors go through the activity's retry policy (visible in the
history, bounded by its attempts and timeouts); a `Retry-After` from the provider becomes the
next retry's delay. Errors that another attempt cannot fix (a bad key, a bad request) are
non-retryable, with one line saying what to do.
"""

from __future__ import annotations

from collections.abc import Mapping

from temporalio.exceptions import ApplicationError

from keel._core.redaction import scrub
from keel._retry_after import retry_after
from keel.errors import (
    ModelAuthError,
    ModelBadRequest,
    ModelQuotaExceeded,
    ModelRateLimited,
    ModelUnavailable,
)

# A provider asking for more than this is capped: the activity's own timeouts and attempts
# bound the wait anyway, and a garbled header must not park a task for days.
MAX_RETRY_DELAY_S = 600.0
MAX_MESSAGE_CHARS = 300

_OVERLOADED = (503, 529)  # 529: Anthropic's "overloaded"
_RETRYABLE_CLIENT = (408, 409, 425)  # timeouts and conflicts a provider expects to be retried


def provider_message(body: object, fallback: str) -> str:
    """The provider's own explanation, on one short line. Handles OpenAI's
    `{"error": {"message"}}` (the SDK may already have unwrapped `error`), Anthropic's
    `{"type": "error", "error": {"type", "message"}}` and FastAPI's `{"detail"}`."""
    message: object = None
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message")
        elif isinstance(inner, str):
            message = inner
        if not message:
            message = body.get("message") or body.get("detail")
    elif isinstance(body, str):
        message = body
    text = str(message) if message else fallback
    text = " ".join(scrub(text).split())  # a provider may quote the key it was sent
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _error_code(body: object) -> str | None:
    if not isinstance(body, Mapping):
        return None
    inner = body.get("error", body)
    if not isinstance(inner, Mapping):
        return None
    code = inner.get("code") or inner.get("type")
    return str(code) if code else None


def status_error(
    *,
    provider: str,
    model: str,
    key_env: str,
    status: int,
    headers: Mapping[str, str],
    body: object,
    fallback_message: str,
    request_id: str | None = None,
) -> ApplicationError:
    """The `ApplicationError` for an HTTP error response of a provider's API.

    `key_env` names the variable(s) that hold the key, for the auth error's advice.
    """
    message = provider_message(body, fallback_message)
    where = f"{provider} model {model}"
    details = {"status": status, "request_id": request_id}
    delay = retry_after(headers, cap_s=MAX_RETRY_DELAY_S)

    if status == 401:
        return ModelAuthError(
            f"{where}: the API key was rejected ({message}); set {key_env} to a valid key",
            details,
        ).to_application_error()
    if status == 403:
        return ModelAuthError(
            f"{where}: the key in {key_env} may not use this model ({message})", details
        ).to_application_error()
    if status == 402:
        return ModelAuthError(
            f"{where}: the account behind {key_env} cannot pay for this call ({message})",
            details,
        ).to_application_error()
    if status == 429:
        # OpenAI answers 429 both for "slow down" and for "your quota is used up"; only the
        # first goes away by waiting.
        if _error_code(body) == "insufficient_quota":
            return ModelQuotaExceeded(
                f"{where}: the quota of the account behind {key_env} is used up ({message})",
                details,
            ).to_application_error()
        return ModelRateLimited(
            f"{where} is rate limited ({message})", details, next_retry_delay=delay
        ).to_application_error()
    if status >= 500 or status in _RETRYABLE_CLIENT:
        # Providers may say explicitly that a retry cannot help (`x-should-retry: false`).
        give_up = headers.get("x-should-retry") == "false"
        state = "overloaded" if status in _OVERLOADED else f"failing (HTTP {status})"
        return ModelUnavailable(
            f"{where} is {state} ({message})",
            details,
            next_retry_delay=delay,
            non_retryable=give_up,
        ).to_application_error()
    # 400, 404, 413, 422, ...: the same request would fail the same way.
    return ModelBadRequest(
        f"{where} refused the request (HTTP {status}: {message})", details
    ).to_application_error()


def sdk_error(
    *,
    provider: str,
    model: str,
    key_env: str,
    err: Exception,
    connection_errors: type[Exception],
) -> Exception:
    """Translate an error raised by a provider SDK. openai and anthropic share the shape:
    status errors carry `status_code`, `response`, `body`, `message`, `request_id`; their
    `connection_errors` class covers refused, reset and timed-out requests. Anything else is
    returned as it is."""
    status = getattr(err, "status_code", None)
    response = getattr(err, "response", None)
    if isinstance(status, int) and response is not None:
        return status_error(
            provider=provider,
            model=model,
            key_env=key_env,
            status=status,
            headers=response.headers,
            body=getattr(err, "body", None),
            fallback_message=getattr(err, "message", str(err)),
            request_id=getattr(err, "request_id", None),
        )
    if isinstance(err, connection_errors):
        return connection_error(provider=provider, model=model, err=err)
    return err  # e.g. a response the SDK could not read: not a provider outage


def connection_error(*, provider: str, model: str, err: Exception) -> ApplicationError:
    """A request that got no response (refused, reset, timed out): retryable."""
    what = "timed out" if "timeout" in type(err).__name__.lower() else "failed"
    request = getattr(err, "request", None)  # the SDKs' connection errors keep their request
    url = getattr(request, "url", None)
    target = f" to {scrub(str(url))}" if url is not None else ""
    return ModelUnavailable(
        f"{provider} model {model}: request{target} {what} ({provider_message(None, str(err))})"
    ).to_application_error()


def missing_key_error(provider: str, key_env: str, base_url_env: str) -> ValueError:
    """Raised when a client is built without a key for the provider's hosted API."""
    return ValueError(
        f"no API key for {provider}: set {key_env} (or set {base_url_env} to a compatible "
        "server that needs none)"
    )
