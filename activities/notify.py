"""`notify_human`: a task has waited too long for a person, so someone is told.

Every escalation is appended to `<KEEL_HOME>/notifications.jsonl` and logged; when
`KEEL_NOTIFY_URL` is set it is also POSTed there as JSON (a chat or paging webhook). A webhook
that fails makes the activity fail and retry; the task keeps waiting either way.
"""

from __future__ import annotations

import json

import httpx
from temporalio import activity

from keel import durable
from keel._logging import activity_logger
from keel.contracts import Notification
from keel.settings import Settings

WEBHOOK_TIMEOUT_S = 10.0


class Notifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name=durable.NOTIFY_HUMAN)
    async def notify_human(self, notification: Notification) -> None:
        payload = notification.model_dump(mode="json")
        path = self.settings.notifications_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(payload) + "\n")
        activity_logger().warning(
            "a task is waiting for a person",
            workflow_id=notification.workflow_id,
            waiting_for=f"{notification.kind.value} {notification.id}",
            waited_s=notification.waited_s,
        )
        if self.settings.notify_url:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, trust_env=False) as client:
                response = await client.post(self.settings.notify_url, json=payload)
                response.raise_for_status()
