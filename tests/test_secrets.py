"""Secrets never surface: one redactor (keel/_core/redaction.py) finds a secret in every form
it takes, and logs, provider errors and the notify webhook's failures go through it."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.models.provider_errors import status_error
from activities.notify import Notifier
from keel import _logging as keel_logging
from keel._core.redaction import REDACTED, Redactor, process_redactor, secret_forms
from keel.contracts import Notification, PendingKind
from keel.settings import Settings, secret_values

KEY = "sk-canary-5f2e9d1c7b"
WEBHOOK = "/services/T0CANARY/B0CANARY/xoxb-canary-secret"


def test_a_secret_is_found_in_every_form_it_takes() -> None:
    redactor = Redactor(["Bearer tok-0a1b2c3d", 'pa ss"wörd+/='])
    for leaked in (
        "Authorization: Bearer tok-0a1b2c3d",
        "your token tok-0a1b2c3d is invalid",  # the token alone
        json.dumps({"echo": 'pa ss"wörd+/='}),  # JSON-escaped
        "https://api.example/?p=pa%20ss%22w%C3%B6rd%2B%2F%3D",  # percent-encoded
    ):
        assert redactor.found_in(leaked), leaked
        assert REDACTED in redactor.scrub(leaked)
    assert not redactor.found_in("Bearer of good news")
    nested = redactor.scrub({"k": ["tok-0a1b2c3d", ("x", "tok-0a1b2c3d")], "n": 3})
    assert nested == {"k": [REDACTED, ("x", REDACTED)], "n": 3}
    # a webhook URL: its path is the secret, and so is a password in it
    forms = secret_forms(f"https://user:hunter2-pw@hooks.example{WEBHOOK}")
    assert WEBHOOK in forms and "hunter2-pw" in forms
    assert secret_forms("abc") == set()  # too short to search for


def test_the_secret_settings_are_listed() -> None:
    settings = Settings(
        openai_api_key=KEY,
        notify_url=f"https://hooks.example{WEBHOOK}",
        sql_url="postgresql://reader:db-canary-pw@127.0.0.1:5432/shop",
    )
    values = secret_values(settings)
    assert KEY in values and "db-canary-pw" in values
    assert f"https://hooks.example{WEBHOOK}" in values
    assert not any("5432/shop" in v and "db-canary-pw" not in v for v in values)


@pytest.fixture
def canaries() -> Iterator[None]:
    process_redactor().add([KEY, f"https://hooks.example{WEBHOOK}"])
    yield


def test_no_log_line_holds_a_secret(canaries: None) -> None:
    out = io.StringIO()
    keel_logging.configure("DEBUG", stream=out)
    try:
        structlog.get_logger("t").info("calling", key=KEY, nested={"url": f"x{WEBHOOK}"})
        try:
            raise RuntimeError(f"the provider said: bad key {KEY}")
        except RuntimeError:
            logging.getLogger("t.stdlib").exception("failed")
        logging.getLogger("httpx").info(f"HTTP Request: POST https://hooks.example{WEBHOOK}")
    finally:
        keel_logging.configure("INFO")
    logged = out.getvalue()
    assert KEY not in logged and WEBHOOK not in logged
    assert logged.count(REDACTED) >= 3  # the key, the URL's path, the exception's text
    assert "HTTP Request" not in logged  # httpx's INFO lines are off


def test_a_provider_error_that_quotes_the_key_does_not(canaries: None) -> None:
    error = status_error(
        provider="openai",
        model="gpt-x",
        key_env="KEEL_OPENAI_API_KEY",
        status=401,
        headers={},
        body={"error": {"message": f"Incorrect API key provided: {KEY}"}},
        fallback_message="",
    )
    assert KEY not in str(error) and REDACTED in str(error)


class _Refusing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"nope")

    def log_message(self, *_: Any) -> None:
        pass


async def test_a_failing_webhook_never_names_its_url(tmp_path: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}{WEBHOOK}"
        notifier = Notifier(Settings(home=tmp_path, notify_url=url))
        notification = Notification(
            workflow_id="w", user_id="u", kind=PendingKind.APPROVAL, id="s1", text="t", waited_s=1
        )
        with pytest.raises(ApplicationError) as failed:
            await ActivityEnvironment().run(notifier.notify_human, notification)
        assert failed.value.type == "HttpUnavailable" and not failed.value.non_retryable
        assert "answered HTTP 500" in failed.value.message
        assert WEBHOOK not in str(failed.value) and "127.0.0.1" not in str(failed.value)
        notifier.settings.notify_url = "http://127.0.0.1:9" + WEBHOOK  # nothing listens
        with pytest.raises(ApplicationError) as unreachable:
            await ActivityEnvironment().run(notifier.notify_human, notification)
        assert "could not be reached (ConnectError)" in unreachable.value.message
        assert WEBHOOK not in str(unreachable.value)
    finally:
        server.shutdown()
