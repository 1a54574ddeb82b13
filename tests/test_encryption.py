"""Payloads encrypted at rest (keel/_encryption.py): keys, rotation, tampering, a whole task's
history read raw with no plaintext in it, and the codec server the Web UI and CLI use."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format
from starlette.testclient import TestClient
from temporalio.api.common.v1 import Payload, Payloads

from keel._codec_server import codec_app
from keel._encryption import ENCODING, KEY_ID, AesGcmCodec, EncryptionError, parse_keys
from keel._queues import Queues
from keel.client import connect, start_task
from keel.contracts import TaskRequest, TaskStatus
from keel.settings import SettingsError, settings_from_env
from keel.testing import Stack, scripted_plan, scripted_workers
from tests.conftest import unique


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


OLD, NEW = _key(), _key()


def _payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


def test_keys_rotate_and_a_changed_payload_is_refused() -> None:
    old = AesGcmCodec(parse_keys(f"k1:{OLD}"))
    rotated = AesGcmCodec(parse_keys(f"k2:{NEW},k1:{OLD}"))  # the new key first
    before = old.encrypt(_payload("secret plan"))
    assert before.metadata["encoding"] == ENCODING and before.metadata[KEY_ID] == b"k1"
    assert b"secret plan" not in before.SerializeToString()
    assert rotated.decrypt(before) == _payload("secret plan")  # old histories still read
    after = rotated.encrypt(_payload("secret plan"))
    assert after.metadata[KEY_ID] == b"k2" and after.data != before.data
    with pytest.raises(EncryptionError, match="key 'k2', which this process does not have"):
        old.decrypt(after)
    tampered = Payload()
    tampered.CopyFrom(after)
    tampered.data = after.data[:-1] + bytes([after.data[-1] ^ 1])
    with pytest.raises(EncryptionError, match="does not decrypt: it was changed"):
        rotated.decrypt(tampered)
    assert rotated.decrypt(_payload("plain")) == _payload("plain")  # written before


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("k1", "give `id:base64key` pairs"),
        ("k1:not base64!", "is not base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "is 5 bytes, not 32"),
        (f"k1:{OLD},k1:{NEW}", "given twice"),
    ],
)
def test_bad_keys_are_one_line_that_never_shows_them(value: str, says: str) -> None:
    with pytest.raises(SettingsError) as failed:
        settings_from_env({"KEEL_ENCRYPTION_KEYS": value})
    assert says in str(failed.value) and "(its value is not shown)" in str(failed.value)
    assert OLD not in str(failed.value) and NEW not in str(failed.value)


async def test_a_tasks_history_holds_no_plaintext(stack: Stack, tmp_path: Path) -> None:
    keys = f"k1:{NEW}"
    settings = stack.settings.model_copy(
        update={"home": tmp_path / "home", "encryption_keys": keys, "queue_prefix": "sealed-"}
    )
    target = stack.client.service_client.config.target_host
    client = await connect(settings, target)
    queues = Queues("sealed-")
    task = unique("What is 6*7 for the codename Bluebird")
    async with scripted_workers(client, settings, queues) as (_, model):
        model.script(
            task,
            "plan",
            scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "6*7"}}),
        )
        handle = await start_task(client, TaskRequest(task=task), queues=queues)
        result = await handle.result()
    assert result.status == TaskStatus.COMPLETED and "42" in result.answer

    # the history as the server holds it, read by a client without the key
    raw = await stack.client.get_workflow_handle(handle.id).fetch_history()
    everything = b"".join(e.SerializeToString() for e in raw.events)
    # (names stay plain: activity types such as tool.calculator, queues, search attributes)
    for plain in (b"Bluebird", b"6*7", b'"expression"', result.answer.encode()[:20]):
        assert plain not in everything, plain
    assert ENCODING in everything

    # the codec server decrypts it for the Web UI: its origin, its token
    codec = AesGcmCodec(parse_keys(keys))
    app = codec_app(
        codec, host="127.0.0.1", port=8081, ui_origins=["http://127.0.0.1:8233"], token="t0ken"
    )
    started = raw.events[0].workflow_execution_started_event_attributes.input
    body = json_format.MessageToJson(Payloads(payloads=list(started.payloads)))
    ui = {"Origin": "http://127.0.0.1:8233", "Content-Type": "application/json"}
    with TestClient(app, base_url="http://127.0.0.1:8081") as http:
        assert http.post("/decode", content=body, headers=ui).status_code == 401
        decoded = http.post(
            "/decode", content=body, headers={**ui, "Authorization": "Bearer t0ken"}
        )
        assert decoded.status_code == 200
        assert decoded.headers["access-control-allow-origin"] == "http://127.0.0.1:8233"
        [payload] = json_format.Parse(decoded.content, Payloads()).payloads
        assert json.loads(payload.data)["task"] == task
        evil = {**ui, "Origin": "http://evil.example", "Authorization": "Bearer t0ken"}
        assert http.post("/decode", content=body, headers=evil).status_code == 403
        preflight = http.options("/decode", headers=ui)
        assert (
            preflight.status_code == 204
            and "x-namespace" in preflight.headers["access-control-allow-headers"]
        )
    with TestClient(app, base_url="http://evil.example:8081") as rebinding:
        assert rebinding.post("/decode", content=body, headers=ui).status_code == 421
