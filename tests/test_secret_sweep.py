"""A sweep for leaked secrets: canary values in the secret settings, a provider that echoes
the key it was sent in its error, and a task that keeps calling it; then the task's raw
history, every log line, its episode in memory and its result are searched for the canaries.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from activities.memory.episodes import EpisodeStore
from keel import _logging as keel_logging
from keel import durable
from keel._identity import issue, parse_identity_keys
from keel._queues import Queues
from keel.client import connect, start_task
from keel.contracts import (
    Approval,
    HumanPolicy,
    StepStatus,
    TaskProgress,
    TaskRequest,
    TaskStatus,
)
from keel.settings import secret_values
from keel.testing import Stack, eventually, scripted_plan
from tests.conftest import TRANSFER_STEP, scripted_workers, unique
from tests.servers import FakeAnthropic, anthropic_error
from workers.components import Components
from workers.process import build_all, workers_running

CLAUDE = "claude-haiku-4-5"


class _Echo(BaseHTTPRequestHandler):
    """An API that says back the headers it was sent (a debug endpoint, a hostile page)."""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.dumps({"headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_a_provider_echoing_its_key_leaves_no_canary_anywhere(
    stack: Stack, tmp_path: Path
) -> None:
    key = f"sk-ant-canary-{uuid.uuid4().hex}"
    webhook = f"http://127.0.0.1:9/hooks/canary-{uuid.uuid4().hex}"
    canaries = [key, webhook.rsplit("/", 1)[1]]
    fake = FakeAnthropic(key)
    fake.start()
    echoed = anthropic_error(401, "authentication_error", f"invalid x-api-key: {key}")
    fake.script(*[echoed] * 20)
    settings = stack.settings.model_copy(
        update={
            "home": tmp_path / "home",
            "reasoner_model": f"anthropic:{CLAUDE}",
            "escalation_model": "scripted",
            "anthropic_api_key": key,
            "anthropic_base_url": fake.base_url,
            "notify_url": webhook,
        }
    )
    queues = Queues("sweep-")
    components = Components(
        settings=settings,
        queues=queues,
        _vectors=stack.components.vectors,  # Qdrant local mode: one client per folder
    )
    logged = io.StringIO()
    keel_logging.configure("DEBUG", stream=logged)
    user = unique("sweep").replace(" ", "-").replace("[", "").replace("]", "")
    try:
        async with workers_running(build_all(stack.client, components)):
            handle = await start_task(
                stack.client,
                TaskRequest(task=unique("Explain the risks of canary deployments"), user_id=user),
                queues=queues,
            )
            result = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        keel_logging.configure("INFO")
        fake.stop()

    # the canary was live: the provider got the key, and said it back
    assert any(key in str(r.headers) for r in fake.requests)
    # each call failed on the key, and said so with the provider's words, without the key
    assert result.status == TaskStatus.FAILED and result.steps
    for step in result.steps:
        assert step.status == StepStatus.FAILED
        assert step.error is not None and "invalid x-api-key: [redacted]" in step.error
    history = b"".join(e.SerializeToString() for e in (await handle.fetch_history()).events).decode(
        "utf-8", "replace"
    )
    [query] = stack.components.vectors.embedder.embed([result.answer or "canary"])
    episodes = EpisodeStore(stack.components.vectors).recall(user, query, 10)
    places = {
        "history": history,
        "logs": logged.getvalue(),
        "result": result.model_dump_json(),
        "episodes": " ".join(e.model_dump_json() for e in episodes),
    }
    for where, text in places.items():
        for canary in canaries:
            assert canary not in text, f"{where} holds a canary"
    assert "[redacted]" in history  # the provider's words reached history, without the key
    assert episodes, "the task's episode was remembered"


async def test_every_secret_setting_stays_out_while_each_component_fails(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task on workers holding a canary in every secret setting, whose steps make each
    secret-bearing component fail: an API that echoes its secret header (http_get), a
    database that is not there (sql_query, its password in the URL), and a wait for a person
    that escalates to a webhook that is not there (the notify URL's secret path); the task is
    signed (identity key and credential). Then history, logs, the result, memory, the payload
    store and the notifications file are searched for every canary."""
    canary = {name: f"canary-{name}-{uuid.uuid4().hex}" for name in ("db", "hook", "token")}
    identity_key = base64.b64encode(os.urandom(32)).decode()
    home = tmp_path / "home"
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    apis_file = tmp_path / "apis.json"
    api = {
        "base_url": f"http://127.0.0.1:{echo.server_address[1]}/",
        "rate_per_s": 50,
        "headers_env": {"Authorization": "KEEL_SWEEP_TOKEN"},
        "requires_approval": False,
    }
    apis_file.write_text(json.dumps({"apis": {"secret": api}}))
    monkeypatch.setenv("KEEL_SWEEP_TOKEN", f"Bearer {canary['token']}")  # its secret header
    settings = stack.settings.model_copy(
        update={
            "home": home,
            "http_apis": apis_file,
            "sql_url": f"postgresql://keel:{canary['db']}@127.0.0.1:9/keel",
            "notify_url": f"http://127.0.0.1:9/hooks/{canary['hook']}",
            "openai_api_key": f"sk-canary-{uuid.uuid4().hex}",
            "anthropic_api_key": f"sk-ant-canary-{uuid.uuid4().hex}",
            "qdrant_api_key": f"qdrant-canary-{uuid.uuid4().hex}",
            "neo4j_password": f"neo4j-canary-{uuid.uuid4().hex}",
            "identity_keys": f"id1:{identity_key}",
        }
    )
    credential = issue(parse_identity_keys(settings.identity_keys or ""), "sweeper")
    secrets = [*canary.values(), identity_key, credential.encode().rsplit(".", 1)[1]]
    secrets += [v for v in secret_values(settings) if len(v) > 8]
    target = stack.client.service_client.config.target_host
    workers_client = await connect(settings, target)
    caller_settings = settings.model_copy(
        update={"identity_keys": None, "credential": credential.encode()}
    )
    caller = await connect(caller_settings, target)
    queues = Queues("sweep2-")
    task = unique("Fetch the echo, count the rows, and pay bob")
    plan = scripted_plan(
        {"id": "s1", "tool": "http_get", "args": {"api": "secret", "path": "echo"}},
        {"id": "s2", "tool": "sql_query", "args": {"query": "SELECT 1"}},
        {**TRANSFER_STEP, "id": "s3"},
    )
    logged = io.StringIO()
    keel_logging.configure("DEBUG", stream=logged)
    try:
        async with scripted_workers(workers_client, settings, queues) as (components, model):
            model.script(task, "plan", plan)
            request = TaskRequest(task=task, max_replans=0, human=HumanPolicy(wait_timeout_s=1))
            handle = await start_task(caller, request, queues=queues)

            async def escalated() -> bool:
                progress = await handle.query(durable.QUERY_STATUS, result_type=TaskProgress)
                return any("the notification failed" in e for e in progress.events)

            await eventually(escalated, "the escalation's webhook to fail", timeout_s=90)
            await handle.execute_update(
                durable.UPDATE_APPROVE, Approval(step_id="s3"), result_type=str
            )
            result = await asyncio.wait_for(handle.result(), timeout=120)
            progress = await handle.query(durable.QUERY_STATUS, result_type=TaskProgress)
            [query] = components.vectors.embedder.embed([task])  # this home's own memory
            episodes = EpisodeStore(components.vectors).recall("sweeper", query, 10)
    finally:
        keel_logging.configure("INFO")
        echo.shutdown()

    # each component really failed, in its own words
    by_id = {s.step_id: s for s in result.steps}
    assert by_id["s1"].status == StepStatus.FAILED
    assert "contains the value of the secret header Authorization" in (by_id["s1"].error or "")
    assert by_id["s2"].status == StepStatus.FAILED
    assert by_id["s3"].status == StepStatus.SUCCEEDED
    assert any("the notification failed" in e for e in progress.events)
    history = b"".join(e.SerializeToString() for e in (await handle.fetch_history()).events)
    assert episodes, "the task's episode was remembered"
    on_disk = b"".join(
        p.read_bytes() for p in home.rglob("*") if p.is_file() and p.stat().st_size < 10**7
    )
    places = {
        "history": history.decode("utf-8", "replace"),
        "logs": logged.getvalue(),
        "result": result.model_dump_json(),
        "episodes": " ".join(e.model_dump_json() for e in episodes),
        "files under KEEL_HOME (payloads, notifications)": on_disk.decode("utf-8", "replace"),
    }
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"{where} holds a canary"
