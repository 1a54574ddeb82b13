"""A sweep for leaked secrets: canary values in the secret settings, a provider that echoes
the key it was sent in its error, and a task that keeps calling it; then the task's raw
history, every log line, its episode in memory and its result are searched for the canaries.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path

from activities.memory.episodes import EpisodeStore
from keel import _logging as keel_logging
from keel._queues import Queues
from keel.client import start_task
from keel.contracts import StepStatus, TaskRequest, TaskStatus
from keel.testing import Stack
from tests.conftest import unique
from tests.servers import FakeAnthropic, anthropic_error
from workers.components import Components
from workers.process import build_all, workers_running

CLAUDE = "claude-haiku-4-5"


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
