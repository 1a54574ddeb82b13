"""The delay an HTTP response asks for before the next try, read from its headers.

One reader for every caller that turns a response into a retry (model providers, the
`http_get` tool): `retry-after-ms` (OpenAI's and Anthropic's, in milliseconds) first, then
`Retry-After` as seconds or as an HTTP date.

Read strictly: a value that is not a non-negative number nor an HTTP date is ignored (the
retry policy's own backoff applies), never guessed at. Seconds may have a fraction (RFC 9110
says whole seconds, but the provider SDKs accept "1.5" and so does Keel). An HTTP date is
GMT even when it does not say so (the asctime form has no zone). Whatever it says is capped
by the caller: a garbled or hostile header must not park a task for days.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from datetime import UTC, timedelta

_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def retry_after(
    headers: Mapping[str, str], *, cap_s: float, now: float | None = None
) -> timedelta | None:
    """The delay the headers ask for, at most `cap_s`; None when they ask for none or it
    cannot be read. `now` (a Unix time) is for tests of the date form."""
    millis = _number(_header(headers, "retry-after-ms"))
    if millis is not None:
        return _capped(millis / 1000, cap_s)
    value = _header(headers, "retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return _capped(seconds, cap_s)
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
        at = when.timestamp() if when.tzinfo else when.replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return _capped(at - (time.time() if now is None else now), cap_s)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The header's value, whatever the case of its name (httpx's headers ignore it; a plain
    dict does not)."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _number(value: str | None) -> float | None:
    if value is None or not _SECONDS.fullmatch(value.strip()):
        return None  # also "-4", "+3", "1e3", "inf", "nan", "1_000": not delays
    return float(value.strip())


def _capped(seconds: float, cap_s: float) -> timedelta:
    return timedelta(seconds=min(max(seconds, 0.0), cap_s))
