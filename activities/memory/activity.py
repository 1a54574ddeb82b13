"""Memory activities on `keel-memory`: recall before planning, remember after answering."""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.memory.episodes import EpisodeStore
from keel.contracts import Episode, Recall, RecallRequest, RememberRequest
from keel.logging import activity_logger


class MemoryActivities:
    def __init__(self, episodes: EpisodeStore) -> None:
        self.episodes = episodes

    @activity.defn(name="recall")
    async def recall(self, request: RecallRequest) -> Recall:
        found = await asyncio.to_thread(
            self.episodes.recall, request.user_id, request.query, request.limit
        )
        activity_logger().info("recalled", episodes=len(found))
        return Recall(episodes=found)

    @activity.defn(name="remember")
    async def remember(self, request: RememberRequest) -> str:
        episode = Episode(
            id=request.workflow_id,
            user_id=request.user_id,
            task=request.task,
            answer=request.answer,
            status=request.status,
        )
        point = await asyncio.to_thread(self.episodes.remember, request.workflow_id, episode)
        activity_logger().info("remembered", point=point)
        return point
