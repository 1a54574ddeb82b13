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
from keel.errors import HttpUnavailable
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
            await self._post(self.settings.notify_url, payload)

    async def _post(self, url: str, payload: dict[str, object]) -> None:
        """POST to the webhook. Its URL is a secret (the path often is the key): no failure
        names it, so none puts it in history or logs."""
        try:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, trust_env=False) as client:
                response = await client.post(url, json=payload)
        except httpx.HTTPError as err:
            raise HttpUnavailable(
                f"the KEEL_NOTIFY_URL webhook could not be reached ({type(err).__name__}); "
                "the task keeps waiting and this is retried"
            ).to_application_error() from None
        if response.is_error:
            raise HttpUnavailable(
                f"the KEEL_NOTIFY_URL webhook answered HTTP {response.status_code}; "
                "the task keeps waiting and this is retried"
            ).to_application_error()
