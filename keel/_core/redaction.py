"""One redactor for every secret Keel holds: API keys, webhook URLs, tool and MCP headers.

A secret leaks in more forms than its own: the token of `Bearer <token>` echoed alone, the
value JSON-escaped or percent-encoded by whatever echoed it, the password or the path of a
webhook URL quoted by an HTTP error. `Redactor` searches for all of those forms and replaces
them with `[redacted]` in strings, lists and dicts; `found_in` tells a caller that would rather
refuse a response than pass it on.

Each process has one (`process_redactor`), to which its settings' secrets are added when it
starts; logs, provider errors and notifications go through it. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 6  # shorter values are not searched for (too many false hits)


def secret_forms(secret: str) -> set[str]:
    """The ways `secret` can appear in text someone else wrote."""
    forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote(secret)}
    words = secret.split()
    if len(words) > 1:  # "Bearer <token>": the token alone
        forms.add(words[-1])
    if "://" in secret:  # a URL: its password, its path and query (a webhook's secret part)
        parts = urlsplit(secret)
        if parts.password:
            forms.add(parts.password)
        rest = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(rest.strip("/")) >= MIN_SECRET_CHARS:
            forms.add(rest)
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


class Redactor:
    def __init__(self, secrets: Iterable[str] = (), replacement: str = REDACTED) -> None:
        self._needles: list[str] = []
        self.replacement = replacement
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        found = set(self._needles)
        for secret in secrets:
            if secret:
                found |= secret_forms(secret)
        # longest first: a value's prefix never leaves the rest of it behind
        self._needles = sorted(found, key=len, reverse=True)

    def found_in(self, text: str) -> bool:
        return any(needle in text for needle in self._needles)

    def scrub(self, value: Any) -> Any:
        """`value` with every form of every secret replaced, in strings, lists, tuples and
        dicts (keys too); anything else as it is."""
        if not self._needles:
            return value
        if isinstance(value, str):
            for needle in self._needles:
                if needle in value:
                    value = value.replace(needle, self.replacement)
            return value
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        return value


_PROCESS = Redactor()


def process_redactor() -> Redactor:
    """This process's redactor: every secret of the settings it started with."""
    return _PROCESS


def scrub(value: Any) -> Any:
    return _PROCESS.scrub(value)
